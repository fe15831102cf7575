"""The one place that builds objects, starts tasks and threads and installs signals
(`service`), with its control socket (`control`), sd_notify (`notify`), logging (`log`),
`report preview` (`preview`) and `tailmail demo` (`demo`).
"""
