"""The ceiling: the bare loop a careful programmer writes for the bench filter, in one process.

Big reads, split, orjson.loads, the test, one write per read. No rules engine, no checkpoint,
no exactly-once, no report: what Python can do at best on this job, so tailmail is measured
against it in the same run on the same machine. Run as `python bench/ceiling.py IN OUT`.
"""

import sys

import orjson


def main(source: str, target: str) -> None:
    loads, error = orjson.loads, orjson.JSONDecodeError
    with open(source, "rb", buffering=0) as f, open(target, "wb", buffering=0) as out:
        carry = b""
        while data := f.read(1 << 20):
            lines = data.split(b"\n")
            lines[0] = carry + lines[0]
            carry = lines.pop()
            chosen = []
            for line in lines:
                try:
                    ev = loads(line)
                except error:
                    continue
                if type(ev) is dict and ev.get("level") in ("error", "warning"):
                    name = ev.get("event")
                    if type(name) is str and name.startswith("login."):
                        chosen.append(line)
            if chosen:
                out.write(b"\n".join(chosen) + b"\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
