//! Flux image automation held off a rolled-back line.

/// The key of Flux's image-automation marker, `# {"$imagepolicy": "<namespace>:<policy>"}`.
const FLUX_MARKER: &str = "\"$imagepolicy\"";
/// What the marker becomes while selfheal holds the line: Flux no longer recognises it.
pub const FLUX_MARKER_HELD: &str = "\"$imagepolicy-held-by-selfheal\"";

/// After a rollback from `before` to `after`, holds Flux image automation off the line that
/// changed: the marker comment's key `"$imagepolicy"` becomes `"$imagepolicy-held-by-selfheal"`,
/// so Flux's ImageUpdateAutomation no longer rewrites that line back to the bad tag. Only the
/// comment of a line the edit changed is touched; renaming the key back resumes automation.
/// Returns the held text and the policy named by the marker, or `None` when no changed line
/// carries a marker (or the edit added lines).
pub fn hold_flux_marker(before: &str, after: &str) -> Option<(String, String)> {
    let old: Vec<&str> = before.split_inclusive('\n').collect();
    let new: Vec<&str> = after.split_inclusive('\n').collect();
    if old.len() != new.len() {
        return None;
    }
    let mut policy = None;
    let held: String = old
        .iter()
        .zip(&new)
        .map(|(was, line)| {
            if was == line {
                return line.to_string();
            }
            // The marker is a comment: after the first " #" that follows the value.
            let Some(comment) = line.find(" #") else {
                return line.to_string();
            };
            let (value, comment_text) = line.split_at(comment);
            let Some(at) = comment_text.find(FLUX_MARKER) else {
                return line.to_string();
            };
            let rest = &comment_text[at + FLUX_MARKER.len()..];
            policy = rest
                .split('"')
                .nth(1)
                .filter(|p| {
                    p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_'))
                })
                .map(str::to_string);
            format!("{value}{}{FLUX_MARKER_HELD}{rest}", &comment_text[..at])
        })
        .collect();
    policy.map(|policy| (held, policy))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Kind, Place, kustomize_image_tag, set_tag};

    #[test]
    fn the_flux_marker_on_the_rolled_back_line_is_held_and_nothing_else_moves() {
        let before = "images:\n  - name: ghcr.io/acme/checkout\n    newTag: v1.5.0 # {\"$imagepolicy\": \"flux-system:checkout:tag\"}\n  - name: ghcr.io/acme/cart\n    newTag: v2.0.0 # {\"$imagepolicy\": \"flux-system:cart:tag\"}\n";
        let after = set_tag(&Place::of(Kind::Kustomize, "checkout"), "k.yaml", before, "v1.4.1").expect("edit");
        let (held, policy) = hold_flux_marker(before, &after).expect("held");
        assert_eq!(policy, "flux-system:checkout:tag");
        assert_eq!(
            held,
            "images:\n  - name: ghcr.io/acme/checkout\n    newTag: v1.4.1 # {\"$imagepolicy-held-by-selfheal\": \"flux-system:checkout:tag\"}\n  - name: ghcr.io/acme/cart\n    newTag: v2.0.0 # {\"$imagepolicy\": \"flux-system:cart:tag\"}\n"
        );
        assert_eq!(
            kustomize_image_tag("k.yaml", &held, "checkout", None).expect("parses"),
            Some("v1.4.1".into())
        );
        // No marker: nothing to hold.
        let plain = "images:\n- name: checkout\n  newTag: v1 # release\n";
        let edited = set_tag(&Place::of(Kind::Kustomize, "checkout"), "k.yaml", plain, "v0").expect("edit");
        assert_eq!(hold_flux_marker(plain, &edited), None);
    }
}
