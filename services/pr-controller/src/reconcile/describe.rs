//! `DescribeTarget`: what main says about the service the labels name.

use std::collections::BTreeMap;

use selfheal_manifest::{self as manifest, Place};
use selfheal_proto::v1::Target;

use super::{error::ReconcileError, settings::Reconciler};

impl Reconciler {
    /// What the main branch says about the service the labels name, in the file of the target
    /// they choose. Blocking.
    pub fn describe(&self, labels: &BTreeMap<String, String>) -> Result<Target, ReconcileError> {
        self.describe_with(labels, &TargetCache::default())
    }

    /// [`Self::describe`], answered from `cache` when the same target was described at the same
    /// tip of main (a burst of alerts on one service asks for it once per commit, not per alert).
    /// Blocking.
    pub fn describe_with(
        &self,
        labels: &BTreeMap<String, String>,
        cache: &TargetCache,
    ) -> Result<Target, ReconcileError> {
        let chosen = self.settings.targets.choose(labels)?;
        let (path, place) = (chosen.path, chosen.place);
        let main = self.settings.main_branch.as_str();
        let tip = self
            .git
            .branch_tip(main)?
            .ok_or_else(|| ReconcileError::Refused(format!("the repository has no branch {main}")))?;
        if let Some(target) = cache.get(&tip, &path, &place) {
            return Ok(target);
        }
        let text = self
            .git
            .read_file(&tip, &path)?
            .ok_or_else(|| ReconcileError::Refused(format!("{path} does not exist on {main}")))?;
        // The file must hold the place (its kind known, the document found); a value it does not
        // set is only empty.
        let read = manifest::read_place(&place, &path, &text)?;
        let (kind, current_tag) = (read.kind, read.tag.unwrap_or_default());
        let replicas = read.replicas.and_then(|r| i32::try_from(r).ok());
        let earlier_tags = self.earlier_tags(&path, &place, &current_tag)?;
        let target = Target {
            repository: self.git.location(),
            path,
            kind: kind.name().into(),
            current_tag,
            earlier_tags,
            replicas,
            max_replicas: self.settings.max_replicas,
        };
        cache.put(&tip, &place, &target);
        Ok(target)
    }
}

/// Targets described at one tip of main. A target is the file at that tip and the history
/// behind it, so while main stays where it is, describing it again gives the same answer; when
/// main moves, everything described before is dropped.
#[derive(Default)]
pub struct TargetCache {
    at: std::sync::Mutex<CachedTargets>,
}

#[derive(Default)]
struct CachedTargets {
    tip: String,
    /// By path and place in the file.
    targets: std::collections::HashMap<(String, Place), Target>,
}

impl TargetCache {
    /// At most this many targets are kept (one tip's worth; more only with more services).
    const MAX: usize = 4096;

    fn get(&self, tip: &str, path: &str, place: &Place) -> Option<Target> {
        let cached = self.at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cached.tip != tip {
            return None;
        }
        cached.targets.get(&(path.to_owned(), place.clone())).cloned()
    }

    fn put(&self, tip: &str, place: &Place, target: &Target) {
        let mut cached = self.at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cached.tip != tip || cached.targets.len() >= Self::MAX {
            // Described at another tip (main moved): what was described before is stale. A
            // describe that read main just before it moved only puts back an entry that no later
            // reader asks for, since they read the newer tip.
            cached.tip = tip.to_owned();
            cached.targets.clear();
        }
        cached
            .targets
            .insert((target.path.clone(), place.clone()), target.clone());
    }
}
