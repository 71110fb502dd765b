"""Server configuration: one schema, loading, validation, sanitized dumps (spec 05).

Typical use by the server entry point::

    result, report = load_and_validate(config_path, os.environ, flags, Path.cwd())
    if not report.valid:
        sys.stderr.write(format_issues(report.errors))
        raise SystemExit(1)
    cfg = result.config
"""

from tokmesh.config.dump import (
    config_loaded_event,
    config_summary,
    config_tree,
    format_issues,
    format_test_report,
    sanitized_config,
)
from tokmesh.config.issues import ConfigIssue
from tokmesh.config.loader import ConfigSource, LoadResult, load_config, load_yaml_text
from tokmesh.config.node_id import resolve_node_id
from tokmesh.config.reload import ApplyResult, apply_partial, reload_plan
from tokmesh.config.schema import KEYS, Config, KeySpec, Kind, build_config, default_config
from tokmesh.config.validate import (
    ValidationReport,
    load_and_validate,
    validate,
    validate_config,
    validate_yaml_text,
)

__all__ = [
    "KEYS",
    "ApplyResult",
    "Config",
    "ConfigIssue",
    "ConfigSource",
    "KeySpec",
    "Kind",
    "LoadResult",
    "ValidationReport",
    "apply_partial",
    "build_config",
    "config_loaded_event",
    "config_summary",
    "config_tree",
    "default_config",
    "format_issues",
    "format_test_report",
    "load_and_validate",
    "load_config",
    "load_yaml_text",
    "reload_plan",
    "resolve_node_id",
    "sanitized_config",
    "validate",
    "validate_config",
    "validate_yaml_text",
]
