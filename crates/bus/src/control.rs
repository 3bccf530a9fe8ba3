//! Operators' switches, read by every service that acts: the kill switch, and the freeze (no
//! automatic change until a time, for a reason: `selfheal freeze on --until … --reason …`).
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

/// The key of the ad-hoc freeze: a [`Freeze`] as JSON; `{}` when there is none.
pub const FREEZE_KEY: &str = "freeze";

/// An ad-hoc change freeze, for every service and replica at once: no automatic change until
/// `until`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Freeze {
    pub until: chrono::DateTime<chrono::Utc>,
    pub reason: String,
    /// Who set it (the CLI's user).
    #[serde(default)]
    pub by: String,
}

/// Opens [`BUCKET`], creating it (entries kept until changed) if missing.
pub async fn open(bus: &SharedBus) -> Result<SharedKeyValue, BusError> {
    bus.key_value(BUCKET, Duration::ZERO).await
}

/// Writes `value` at `key`, whatever was there (compare-and-set, tried again when somebody else
/// wrote meanwhile).
async fn set(kv: &SharedKeyValue, key: &str, value: Bytes) -> Result<(), KvError> {
    // Bounded: each lost compare-and-set means somebody else changed the key meanwhile.
    for _ in 0..16 {
        let written = match kv.get(key).await? {
            None => kv.create(key, value.clone()).await,
            Some(entry) => kv.update(key, value.clone(), entry.revision).await,
        };
        match written {
            Ok(_) => return Ok(()),
            Err(KvError::Exists(_) | KvError::Conflict { .. }) => continue,
            Err(error) => return Err(error),
        }
    }
    Err(KvError::Other(format!("{key} kept changing; retry")))
}

/// Turns the kill switch on or off; `kv` is [`BUCKET`].
pub async fn set_kill_switch(kv: &SharedKeyValue, on: bool) -> Result<(), KvError> {
    set(kv, KILL_SWITCH_KEY, if on { "on".into() } else { "off".into() }).await
}

/// Sets the freeze, or lifts it (`None`); `kv` is [`BUCKET`].
pub async fn set_freeze(kv: &SharedKeyValue, freeze: Option<&Freeze>) -> Result<(), KvError> {
    let value = match freeze {
        Some(freeze) => serde_json::to_vec(freeze).map_err(|e| KvError::Other(e.to_string()))?,
        None => b"{}".to_vec(),
    };
    set(kv, FREEZE_KEY, value.into()).await
}

/// The freeze as stored, if one is set (it may have ended: compare `until` with now). A value
/// that does not parse is an error, never "no freeze": an unreadable freeze fails closed.
pub async fn freeze(kv: &SharedKeyValue) -> Result<Option<Freeze>, KvError> {
    let Some(entry) = kv.get(FREEZE_KEY).await? else {
        return Ok(None);
    };
    if entry.value.as_ref() == b"{}" {
        return Ok(None);
    }
    serde_json::from_slice(&entry.value)
        .map(Some)
        .map_err(|e| KvError::Other(format!("{FREEZE_KEY} in {BUCKET} is unreadable ({e}): fix or lift it")))
}

/// The freeze in force at `now`, if any (one set that has not ended).
pub async fn freeze_in_force(
    kv: &SharedKeyValue,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<Freeze>, KvError> {
    Ok(freeze(kv).await?.filter(|f| f.until > now))
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

/// The freeze as the deciding path reads it, once per decision, reads at once sharing one round
/// trip (as [`KillSwitch`]).
#[derive(Clone)]
pub struct FreezeReader {
    kv: SharedKeyValue,
    reads: std::sync::Arc<crate::coalesce::Coalesce<(), Result<Option<Freeze>, KvError>>>,
}

impl FreezeReader {
    /// The freeze in `kv` ([`BUCKET`]).
    pub fn new(kv: SharedKeyValue) -> Self {
        Self {
            kv,
            reads: Default::default(),
        }
    }

    /// The freeze in force at `now`, if any.
    pub async fn in_force(&self, now: chrono::DateTime<chrono::Utc>) -> Result<Option<Freeze>, KvError> {
        let kv = self.kv.clone();
        self.reads
            .read((), move || async move { freeze(&kv).await })
            .await
            .map(|read| read.filter(|f| f.until > now))
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

    #[tokio::test]
    async fn a_freeze_holds_until_its_time_and_lifts() -> Result<(), KvError> {
        let kv: SharedKeyValue = Arc::new(MemoryKeyValue::default());
        let reader = FreezeReader::new(kv.clone());
        let now = chrono::Utc::now();
        assert_eq!(reader.in_force(now).await?, None);
        let freeze = Freeze {
            until: now + chrono::Duration::hours(1),
            reason: "payments migration".into(),
            by: "oncall".into(),
        };
        set_freeze(&kv, Some(&freeze)).await?;
        assert_eq!(reader.in_force(now).await?, Some(freeze.clone()));
        assert_eq!(
            reader.in_force(now + chrono::Duration::hours(2)).await?,
            None,
            "over after until"
        );
        set_freeze(&kv, None).await?;
        assert_eq!(reader.in_force(now).await?, None, "lifted");
        // Unreadable is an error, not "no freeze".
        set(&kv, FREEZE_KEY, "garbage".into()).await?;
        assert!(reader.in_force(now).await.is_err());
        Ok(())
    }
}
