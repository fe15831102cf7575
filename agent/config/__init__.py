"""What the operator wrote, validated once at the edge into frozen objects (`model`), with
every mistake a `FILE:LINE` problem (`load`, `yamlfile`).
"""

from agent.config.load import (
    LOG_KEYS,
    REPORT_KEYS,
    SMTP_KEYS,
    SOURCE_KEYS,
    TOP_KEYS,
    check_address,
    config_path,
    expand_env,
    has_header_breaks,
    load_config,
    parse_duration,
    parse_size,
    parse_timezone,
)
from agent.config.model import (
    DEFAULT_CONFIG,
    DEFAULT_SUBJECT,
    SUBJECT_FIELDS,
    Config,
    LogConfig,
    ReportConfig,
    SmtpConfig,
    SourceConfig,
)
from agent.config.yamlfile import Map, Problem, ProblemsError, Seq, load_yaml, parse_yaml

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_SUBJECT",
    "LOG_KEYS",
    "REPORT_KEYS",
    "SMTP_KEYS",
    "SOURCE_KEYS",
    "SUBJECT_FIELDS",
    "TOP_KEYS",
    "Config",
    "LogConfig",
    "Map",
    "Problem",
    "ProblemsError",
    "ReportConfig",
    "Seq",
    "SmtpConfig",
    "SourceConfig",
    "check_address",
    "config_path",
    "expand_env",
    "has_header_breaks",
    "load_config",
    "load_yaml",
    "parse_duration",
    "parse_size",
    "parse_timezone",
    "parse_yaml",
]
