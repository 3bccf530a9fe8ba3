//! The incident key: one name for one incident everywhere (message ids, branch names, audit rows).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// Which labels make an alert's identity.
#[derive(Clone, Debug)]
pub struct Identity {
    labels: Vec<String>,
}

impl Default for Identity {
    fn default() -> Self {
        Self::with_extra_labels(&[])
    }
}

impl Identity {
    /// The identity labels: `alertname`, `cluster`, `namespace`, `service`, plus `extra`.
    pub fn with_extra_labels(extra: &[String]) -> Self {
        let mut labels: Vec<String> = ["alertname", "cluster", "namespace", "service"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for label in extra {
            if !labels.contains(label) {
                labels.push(label.clone());
            }
        }
        labels.sort();
        Self { labels }
    }

    /// 16 hex digits of SHA-256 over the identity labels (absent ones included as absent) and
    /// the normalised `starts_at`. A repeat or resolved notification of the same alert gets the
    /// same key; the same alert firing again later (a new `startsAt`) is a new incident.
    pub fn incident_key(&self, labels: &BTreeMap<String, String>, starts_at: &str) -> String {
        let mut hasher = Sha256::new();
        for name in &self.labels {
            hasher.update(name.as_bytes());
            match labels.get(name) {
                Some(value) => {
                    hasher.update(b"=");
                    hasher.update(value.len().to_le_bytes());
                    hasher.update(value.as_bytes());
                }
                None => hasher.update(b"!"),
            }
            hasher.update(b"\n");
        }
        hasher.update(b"startsAt=");
        hasher.update(starts_at.as_bytes());
        hex::encode(&hasher.finalize()[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn only_identity_labels_count() {
        let identity = Identity::default();
        let a = identity.incident_key(&labels(&[("alertname", "X"), ("service", "s"), ("pod", "p1")]), "t");
        let b = identity.incident_key(&labels(&[("alertname", "X"), ("service", "s"), ("pod", "p2")]), "t");
        let c = identity.incident_key(&labels(&[("alertname", "X"), ("service", "t")]), "t");
        let d = identity.incident_key(&labels(&[("alertname", "X"), ("service", "s")]), "t2");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        let with_pod = Identity::with_extra_labels(&["pod".into()]);
        assert_ne!(
            with_pod.incident_key(&labels(&[("alertname", "X"), ("pod", "p1")]), "t"),
            with_pod.incident_key(&labels(&[("alertname", "X"), ("pod", "p2")]), "t")
        );
    }

    #[test]
    fn absent_is_not_empty() {
        let identity = Identity::default();
        assert_ne!(
            identity.incident_key(&labels(&[("alertname", "X")]), "t"),
            identity.incident_key(&labels(&[("alertname", "X"), ("service", "")]), "t")
        );
    }
}
