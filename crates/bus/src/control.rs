//! Operators' switches, read by every service that acts: the kill switch.
//!
//! They live in their own bucket, [`BUCKET`], whose entries never expire (unlike the policy's
//! reservations, which age out): a switch turned on stays on until somebody turns it off.

use std::time::Duration;

use bytes::Bytes;

use crate::{
    BusError, SharedBus,
    kv::{KvError, SharedKeyValue},
};

/// The bucket of operators' switches.
pub const BUCKET: &str = "selfheal_control";

/// The key of the runtime kill switch: `on` stops every automatic action at once, on every
/// replica of every service, without a restart (`selfheal kill-switch on|off`).
pub const KILL_SWITCH_KEY: &str = "kill_switch";

/// Opens [`BUCKET`], creating it (entries kept until changed) if missing.
pub async fn open(bus: &SharedBus) -> Result<SharedKeyValue, BusError> {
    bus.key_value(BUCKET, Duration::ZERO).await
}

/// Turns the kill switch on or off; `kv` is [`BUCKET`].
pub async fn set_kill_switch(kv: &SharedKeyValue, on: bool) -> Result<(), KvError> {
    let value: Bytes = if on { "on".into() } else { "off".into() };
    // Bounded: each lost compare-and-set means somebody else changed the switch meanwhile.
    for _ in 0..16 {
        let written = match kv.get(KILL_SWITCH_KEY).await? {
            None => kv.create(KILL_SWITCH_KEY, value.clone()).await,
            Some(entry) => kv.update(KILL_SWITCH_KEY, value.clone(), entry.revision).await,
        };
        match written {
            Ok(_) => return Ok(()),
            Err(KvError::Exists(_) | KvError::Conflict { .. }) => continue,
            Err(error) => return Err(error),
        }
    }
    Err(KvError::Other("the kill switch kept changing; retry".into()))
}

/// Whether the kill switch is on; `kv` is [`BUCKET`].
pub async fn kill_switch_on(kv: &SharedKeyValue) -> Result<bool, KvError> {
    Ok(kv
        .get(KILL_SWITCH_KEY)
        .await?
        .is_some_and(|e| e.value.as_ref() == b"on"))
}

/// The kill switch as the deciding and acting paths read it, once per decision: reads at once
/// share one round trip ([`crate::coalesce`]), so a burst of decisions costs a few reads, not one
/// each. A caller gets the answer of the read in flight when it asked, or of one it starts, so
/// the switch stops every decision that looks one round trip after the `on` is stored (one that
/// looked a moment before may still go ahead, as it always could).
#[derive(Clone)]
pub struct KillSwitch {
    kv: SharedKeyValue,
    reads: std::sync::Arc<crate::coalesce::Coalesce<(), Result<bool, KvError>>>,
}

impl KillSwitch {
    /// The switch in `kv` ([`BUCKET`]).
    pub fn new(kv: SharedKeyValue) -> Self {
        Self {
            kv,
            reads: Default::default(),
        }
    }

    /// Whether it is on.
    pub async fn is_on(&self) -> Result<bool, KvError> {
        let kv = self.kv.clone();
        self.reads
            .read((), move || async move { kill_switch_on(&kv).await })
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::kv::MemoryKeyValue;

    #[tokio::test]
    async fn the_switch_flips_and_reads_back() -> Result<(), KvError> {
        let kv: SharedKeyValue = Arc::new(MemoryKeyValue::default());
        assert!(!kill_switch_on(&kv).await?, "off until turned on");
        set_kill_switch(&kv, true).await?;
        assert!(kill_switch_on(&kv).await?);
        set_kill_switch(&kv, true).await?;
        assert!(kill_switch_on(&kv).await?, "on twice is on");
        set_kill_switch(&kv, false).await?;
        assert!(!kill_switch_on(&kv).await?);
        let switch = KillSwitch::new(kv.clone());
        assert!(!switch.is_on().await?);
        set_kill_switch(&kv, true).await?;
        assert!(switch.is_on().await?, "read afresh after it was turned on");
        Ok(())
    }
}
