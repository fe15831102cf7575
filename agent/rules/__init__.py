"""The rules in `rules_dir`: condition tree -> predicates, index.

Data flows through the modules in this order:

- `fields`: the one reader of field paths (`user.name`, `items.0`), for the whole product;
- `condition`: the condition tree (`All`, `AnyOf`, `Not`, `FieldTest` and its operators) and
  the `when` window, as frozen values;
- `parse`: the one parser, located YAML -> tree, every mistake a `FILE:LINE` problem;
- `values`, `patterns`: tests of one JSON value; regular expressions and globs (RE2);
- `predicates`: the tree compiled into closures, the window into a time test;
- `keys`: the index key and residual of a tree;
- `routes`: the `Router` that finds an event's candidate rules by their keys;
- `rule`: `Rule` (everything derived from its tree once; `Rule.selects`) and rule files' data;
- `load`: rule files on disk, limits, and reloads (`RuleBook`).

Tests and other packages use the names exported here; modules inside `agent/` may also name a
submodule.
"""

from agent.config.yamlfile import Problem
from agent.rules.condition import (
    All,
    AnyOf,
    Cidr,
    Condition,
    Contains,
    EndsWith,
    Eq,
    Exists,
    FieldTest,
    Glob,
    In,
    Ne,
    Not,
    NotIn,
    Operator,
    Order,
    Regex,
    StartsWith,
    Window,
    paths,
)
from agent.rules.fields import MISSING, Event, Getter, getter, is_path, position
from agent.rules.keys import EQ, PREFIX, Key, residual, rule_key
from agent.rules.load import (
    MAX_RULE_FILE_BYTES,
    RuleBook,
    Staged,
    check_rules,
    is_rule_file_name,
    load_rule_file,
    load_rules_path,
    read_bounded,
)
from agent.rules.patterns import FAST_RE2, glob_test, glob_to_re2, regex_test
from agent.rules.predicates import Predicate, TimeTest, predicate, time_test
from agent.rules.routes import MEMO_LIMIT, Route, Router
from agent.rules.rule import Rule, TimeOf, parse_rules

__all__ = [
    "EQ",
    "FAST_RE2",
    "MAX_RULE_FILE_BYTES",
    "MEMO_LIMIT",
    "MISSING",
    "PREFIX",
    "All",
    "AnyOf",
    "Cidr",
    "Condition",
    "Contains",
    "EndsWith",
    "Eq",
    "Event",
    "Exists",
    "FieldTest",
    "Getter",
    "Glob",
    "In",
    "Key",
    "Ne",
    "Not",
    "NotIn",
    "Operator",
    "Order",
    "Predicate",
    "Problem",
    "Regex",
    "Route",
    "Router",
    "Rule",
    "RuleBook",
    "Staged",
    "StartsWith",
    "TimeOf",
    "TimeTest",
    "Window",
    "check_rules",
    "getter",
    "glob_test",
    "glob_to_re2",
    "is_path",
    "is_rule_file_name",
    "load_rule_file",
    "load_rules_path",
    "parse_rules",
    "paths",
    "position",
    "predicate",
    "read_bounded",
    "regex_test",
    "residual",
    "rule_key",
    "time_test",
]
