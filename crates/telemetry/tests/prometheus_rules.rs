//! The alerts on selfheal itself load in a real Prometheus's promtool, and every rule's metric is
//! one the services export.

use std::{collections::BTreeSet, process::Command};

#[test]
fn rules_load_in_promtool_and_name_exported_metrics() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus/selfheal-rules.yml");
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .map_err(|e| format!("{promtool} (Debian's prometheus package) must be installed: {e}"))?;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS"));

    let exported: BTreeSet<&str> = selfheal_telemetry::metrics::ALL.iter().copied().collect();
    let text = std::fs::read_to_string(&path)?;
    let exprs: Vec<&str> = text.lines().filter_map(|l| l.trim().strip_prefix("expr:")).collect();
    assert!(exprs.len() >= 5, "{exprs:?}");
    for expr in exprs {
        let names: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("selfheal_"))
            .collect();
        for name in &names {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .fold(*name, |n, suffix| n.strip_suffix(suffix).unwrap_or(n));
            assert!(
                exported.contains(base),
                "{expr}: {name} is not a metric selfheal exports"
            );
        }
        assert!(
            !names.is_empty() || expr.contains("up{"),
            "{expr}: names no selfheal metric"
        );
    }
    Ok(())
}
