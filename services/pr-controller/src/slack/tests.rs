//! The endpoint against fakes of Slack and of the remediations (the real ones: `e2e/tests/people.rs`).

#![allow(clippy::unwrap_used)]

use std::sync::Mutex;

use axum::body::Body;
use tower::ServiceExt as _;

use super::*;

const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

#[derive(Default)]
struct Fake {
    groups: HashMap<String, Vec<String>>,
    group_reads: Mutex<usize>,
    told: Mutex<Vec<serde_json::Value>>,
    done: Mutex<Vec<(bool, String, String)>>,
}

#[async_trait]
impl Directory for Fake {
    async fn members(&self, group: &str) -> Result<Vec<String>, SlackError> {
        *self.group_reads.lock().unwrap() += 1;
        self.groups
            .get(group)
            .cloned()
            .ok_or_else(|| SlackError::Refused("usergroups.users.list: no_such_subteam".into()))
    }
}

#[async_trait]
impl Responder for Fake {
    async fn respond(&self, _: &url::Url, message: &serde_json::Value) -> Result<(), SlackError> {
        self.told.lock().unwrap().push(message.clone());
        Ok(())
    }
}

#[async_trait]
impl Operator for Fake {
    async fn approve(&self, incident: &str, by: &str) -> Result<RemediationEvent, tonic::Status> {
        self.done.lock().unwrap().push((true, incident.into(), by.into()));
        let mut event = RemediationEvent {
            incident_key: incident.into(),
            service: "checkout".into(),
            commit: "0123456789abcdef".into(),
            from_value: "v1.2.0".into(),
            to_value: "v1.1.0".into(),
            message: format!("approved by {by}: merged"),
            ..Default::default()
        };
        event.set_state(selfheal_proto::v1::RemediationState::Merged);
        Ok(event)
    }
    async fn reject(&self, incident: &str, by: &str, _: &str) -> Result<RemediationEvent, tonic::Status> {
        self.done.lock().unwrap().push((false, incident.into(), by.into()));
        Err(tonic::Status::failed_precondition(
            "remediation is merged; only an opened or failed one can be rejected",
        ))
    }
}

fn interactions(fake: Arc<Fake>, users: &[&str], groups: &[&str]) -> Arc<Interactions> {
    let settings = SlackConfig {
        signing_secret: Some(Secret::new(SECRET)),
        allowed_users: users.iter().map(|s| s.to_string()).collect(),
        allowed_groups: groups.iter().map(|s| s.to_string()).collect(),
        bot_token: Some(Secret::new("xoxb-test")),
        ..Default::default()
    }
    .check()
    .unwrap()
    .unwrap();
    Arc::new(Interactions::new(settings, fake.clone(), fake.clone(), fake))
}

fn click_body(action: &str, incident: &str, user: &str) -> String {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user, "username": "alice", "name": "alice", "team_id": "T1"},
        "api_app_id": "A1",
        "team": {"id": "T1", "domain": "acme"},
        "channel": {"id": "C1", "name": "oncall"},
        "response_url": "https://hooks.slack.com/actions/T1/1/abc",
        "trigger_id": "1.2.3",
        "actions": [{"type": "button", "block_id": "selfheal.approval", "action_id": action, "value": incident, "action_ts": "1.2"}],
    });
    form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish()
}

async fn send(interactions: &Arc<Interactions>, body: &str, timestamp: i64, secret: &str) -> StatusCode {
    let ts = timestamp.to_string();
    let request = axum::http::Request::post(PATH)
        .header("content-type", "application/x-www-form-urlencoded")
        .header(slack::TIMESTAMP_HEADER, &ts)
        .header(
            slack::SIGNATURE_HEADER,
            slack::sign(secret.as_bytes(), &ts, body.as_bytes()),
        )
        .body(Body::from(body.to_string()))
        .unwrap();
    let status = interactions.clone().router().oneshot(request).await.unwrap().status();
    interactions.settled().await;
    status
}

#[tokio::test]
async fn an_allowed_users_approval_is_carried_out_and_the_message_names_them() {
    let fake = Arc::new(Fake::default());
    let slack = interactions(fake.clone(), &["U0ALICE"], &[]);
    let now = chrono::Utc::now().timestamp();
    let status = send(&slack, &click_body(APPROVE_ACTION, "inc1", "U0ALICE"), now, SECRET).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        *fake.done.lock().unwrap(),
        vec![(true, "inc1".to_string(), "@alice (Slack U0ALICE)".to_string())]
    );
    let told = fake.told.lock().unwrap();
    assert_eq!(told.len(), 1);
    assert_eq!(told[0]["replace_original"], true);
    let text = told[0]["blocks"][1]["text"]["text"].as_str().unwrap();
    assert!(
        text.contains("Approved by <@U0ALICE>") && text.contains("merged"),
        "{text}"
    );
}

#[tokio::test]
async fn forged_stale_and_unlisted_clicks_do_nothing() {
    let fake = Arc::new(Fake::default());
    let slack = interactions(fake.clone(), &["U0ALICE"], &[]);
    let now = chrono::Utc::now().timestamp();
    let body = click_body(APPROVE_ACTION, "inc1", "U0ALICE");
    assert_eq!(
        send(&slack, &body, now, "another-secret").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(send(&slack, &body, now - 301, SECRET).await, StatusCode::UNAUTHORIZED);
    // Signed, but by someone not on the list: answered, refused to them alone.
    let mallory = click_body(APPROVE_ACTION, "inc1", "U0MALLORY");
    assert_eq!(send(&slack, &mallory, now, SECRET).await, StatusCode::OK);
    assert!(fake.done.lock().unwrap().is_empty(), "nothing carried out");
    let told = fake.told.lock().unwrap();
    assert_eq!(told.len(), 1);
    assert_eq!(told[0]["response_type"], "ephemeral");
    assert!(told[0]["text"].as_str().unwrap().contains("not on selfheal's list"));
}

#[tokio::test]
async fn group_members_may_act_and_groups_are_read_once_per_cache_period() {
    let fake = Arc::new(Fake {
        groups: HashMap::from([("S0ONCALL".to_string(), vec!["U0BOB".to_string()])]),
        ..Default::default()
    });
    let slack = interactions(fake.clone(), &[], &["S0MISSING", "S0ONCALL"]);
    let now = chrono::Utc::now().timestamp();
    assert_eq!(
        send(&slack, &click_body(REJECT_ACTION, "inc2", "U0BOB"), now, SECRET).await,
        StatusCode::OK
    );
    assert_eq!(
        send(&slack, &click_body(REJECT_ACTION, "inc2", "U0BOB"), now, SECRET).await,
        StatusCode::OK
    );
    assert_eq!(fake.done.lock().unwrap().len(), 2);
    // The readable group was read once; the missing one on each click.
    assert_eq!(*fake.group_reads.lock().unwrap(), 3);
    // The reject failed (already merged): the user is told why, the message stays.
    let told = fake.told.lock().unwrap();
    assert_eq!(told[0]["response_type"], "ephemeral");
    assert!(
        told[0]["text"]
            .as_str()
            .unwrap()
            .contains("only an opened or failed one"),
        "{}",
        told[0]
    );
}

#[tokio::test]
async fn malformed_clicks_are_refused_by_field_and_other_interactions_ignored() {
    let fake = Arc::new(Fake::default());
    let slack = interactions(fake.clone(), &["U0ALICE"], &[]);
    let now = chrono::Utc::now().timestamp();
    assert_eq!(send(&slack, "nopayload=1", now, SECRET).await, StatusCode::BAD_REQUEST);
    assert_eq!(
        send(&slack, &click_body(APPROVE_ACTION, "../../etc", "U0ALICE"), now, SECRET).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        send(&slack, &click_body("someone.else", "inc1", "U0ALICE"), now, SECRET).await,
        StatusCode::OK
    );
    assert!(fake.done.lock().unwrap().is_empty() && fake.told.lock().unwrap().is_empty());
}

#[test]
fn settings_name_what_is_missing() {
    let err = |config: SlackConfig| config.check().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(SlackConfig::default().check().unwrap().is_none(), "off by default");
    let signed = SlackConfig {
        signing_secret: Some(Secret::new(SECRET)),
        ..Default::default()
    };
    assert!(err(signed.clone()).starts_with("slack.allowed_users:"));
    assert!(
        err(SlackConfig {
            allowed_groups: vec!["S0ONCALL".into()],
            ..signed.clone()
        })
        .starts_with("slack.bot_token:")
    );
    assert!(
        err(SlackConfig {
            allowed_users: vec!["alice".into()],
            ..signed
        })
        .contains("not a Slack id")
    );
    assert!(
        err(SlackConfig {
            allowed_users: vec!["U0ALICE".into()],
            ..Default::default()
        })
        .starts_with("slack.signing_secret:")
    );
}
