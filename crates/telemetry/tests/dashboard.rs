//! The Grafana dashboard in deploy/grafana is valid dashboard JSON, and every query names a
//! metric the services export.

use std::collections::BTreeSet;

#[test]
fn every_panel_queries_exported_metrics() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/selfheal-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    for key in ["uid", "title"] {
        assert!(dashboard[key].as_str().is_some_and(|v| !v.is_empty()), "{key}");
    }
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    let panels = dashboard["panels"].as_array().ok_or("panels")?;
    assert!(panels.len() >= 3);
    let exported: BTreeSet<&str> = selfheal_telemetry::metrics::ALL.iter().copied().collect();
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().ok_or("a panel without a title")?;
        assert!(
            ids.insert(panel["id"].as_u64().ok_or("panel id")?),
            "{title}: duplicate id"
        );
        assert!(panel["type"].as_str().is_some(), "{title}: type");
        for field in ["h", "w", "x", "y"] {
            assert!(panel["gridPos"][field].as_u64().is_some(), "{title}: gridPos.{field}");
        }
        let targets = panel["targets"].as_array().ok_or("targets")?;
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().ok_or("expr")?;
            assert!(target["refId"].as_str().is_some(), "{title}: refId");
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("selfheal_"))
                .collect();
            assert!(!names.is_empty(), "{title}: {expr} names no selfheal metric");
            for name in names {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .fold(name, |n, suffix| n.strip_suffix(suffix).unwrap_or(n));
                assert!(
                    exported.contains(base),
                    "{title}: {name} is not a metric selfheal exports"
                );
                used.insert(base);
            }
        }
    }
    for seed_panel in [
        "selfheal_actions_total",
        "selfheal_mttr_seconds",
        "selfheal_verifications_total",
    ] {
        assert!(used.contains(seed_panel), "the seed's panels: {seed_panel}");
    }
    Ok(())
}
