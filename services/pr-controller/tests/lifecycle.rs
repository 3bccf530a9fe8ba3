//! The remediation lifecycle over gRPC: Get, List, Approve, Reject, Retry, on a real git
//! repository, with the token check in front.

use std::{sync::Arc, time::Duration};

use prost::Message as _;
use selfheal_bus::{kv::MemoryKeyValue, memory::MemoryBus};
use selfheal_git::{Author, GitRepo, LocalRepository};
use selfheal_pr_controller::{PrControllerConfig, RemediationHandler, grpc, reconcile::Reconciler, verify::Verifier};
use selfheal_proto::v1::{
    Action, Alert, AlertEvent, Approval, ApproveRequest, Decision, DecisionParams, GetRemediationRequest,
    ListRemediationsRequest, RejectRequest, RemediationEvent, RemediationState, RetryRequest,
    remediations_client::RemediationsClient,
};
use tonic::{Code, Request, transport::Channel};

const TOKEN: &str = "lifecycle-token";

fn decision(incident: &str, service: &str, action: Action, approval: Approval) -> Decision {
    let labels = [("alertname", "HighErrorRate"), ("service", service)]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut decision = Decision {
        incident_key: incident.into(),
        reason: "error rate 12%".into(),
        params: Some(DecisionParams {
            target_tag: String::new(),
            replicas: Some(4),
        }),
        alert: Some(AlertEvent {
            incident_key: incident.into(),
            alert: Some(Alert {
                status: "firing".into(),
                labels,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    decision.set_action(action);
    decision.set_approval(approval);
    decision
}

fn authed<T>(message: T) -> Request<T> {
    bearer(message, TOKEN)
}

fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().expect("header"));
    request
}

/// The shared token, a reader's and an on-call engineer's.
fn tokens() -> selfheal_config::TokenCheck {
    use selfheal_config::{NamedToken, Role, Secret};
    let named = [
        ("reader", "reader-token", vec![Role::Read]),
        ("oncall-1", "oncall-token", vec![Role::Read, Role::Operate]),
    ]
    .into_iter()
    .map(|(name, token, roles)| NamedToken {
        name: name.into(),
        token: Some(Secret::new(token)),
        token_file: None,
        roles,
    })
    .collect::<Vec<_>>();
    selfheal_config::TokenCheck::from_settings(Some(Secret::new(TOKEN)), None, &named, "SELFHEAL_PR_CONTROLLER_")
        .expect("tokens")
}

fn file(tag: &str, replicas: u32) -> String {
    format!("images:\n- name: checkout\n  newTag: {tag} # release\nreplicas:\n- name: checkout\n  count: {replicas}\n")
}

#[tokio::test]
async fn approve_reject_and_retry_move_remediations_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bare = dir.path().join("gitops.git");
    let author = Author {
        name: "dev".into(),
        email: "dev@example.com".into(),
    };
    let (v1, v2) = (file("v1", 2), file("v2", 2));
    let repo = Arc::new(LocalRepository::init_bare_with_commits(
        &bare,
        "main",
        &[
            ("v1", vec![("apps/checkout/kustomization.yaml", v1.as_str())]),
            ("v2", vec![("apps/checkout/kustomization.yaml", v2.as_str())]),
        ],
        &author,
    )?);
    let main_file = |repo: &LocalRepository, path: &str| -> anyhow::Result<Option<String>> {
        let tip = repo.branch_tip("main")?.ok_or_else(|| anyhow::anyhow!("no main"))?;
        Ok(repo.read_file(&tip, path)?)
    };
    let bus = MemoryBus::default();
    let verifier = Verifier::new(Arc::new(MemoryKeyValue::default()), Duration::from_secs(600));
    let handler = Arc::new(
        RemediationHandler::new(
            Reconciler::new(
                repo.clone(),
                None,
                PrControllerConfig::default()
                    .reconcile_settings()
                    .expect("valid targets"),
            ),
            Arc::new(bus.clone()),
        )
        .with_verifier(verifier),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(grpc::server(
                std::sync::Arc::new(grpc::RemediationsService::new(handler.clone())),
                tokens(),
            ))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let mut client: RemediationsClient<Channel> = RemediationsClient::connect(format!("http://{addr}")).await?;
    let span = tracing::Span::none;

    // A rollback waiting for approval, and a scale waiting too.
    let opened = handler
        .carry_out(
            decision("inc1", "checkout", Action::Rollback, Approval::Required),
            "checkout".into(),
            None,
            span(),
        )
        .await?
        .expect("an event");
    assert_eq!(opened.state(), RemediationState::Opened);
    handler
        .carry_out(
            decision("inc2", "checkout", Action::Scale, Approval::Required),
            "checkout".into(),
            None,
            span(),
        )
        .await?;

    // Without the token: refused.
    let refused = client
        .list(Request::new(ListRemediationsRequest::default()))
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);

    let waiting = client
        .list(authed(ListRemediationsRequest {
            state: RemediationState::Opened as i32,
            ..Default::default()
        }))
        .await?
        .into_inner()
        .remediations;
    let mut keys: Vec<&str> = waiting.iter().map(|r| r.incident_key.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["inc1", "inc2"]);

    // Approve: merged into main, once.
    let approved = client
        .approve(authed(ApproveRequest {
            incident_key: "inc1".into(),
            by: "alice\nInjected: x".into(),
        }))
        .await?
        .into_inner();
    assert_eq!(approved.state(), RemediationState::Merged, "{}", approved.message);
    assert!(
        approved.message.starts_with("approved by alice Injected: x: "),
        "{}",
        approved.message
    );
    assert!(
        main_file(&repo, "apps/checkout/kustomization.yaml")?
            .unwrap_or_default()
            .contains("newTag: v1 # release")
    );
    let again = client
        .approve(authed(ApproveRequest {
            incident_key: "inc1".into(),
            by: "alice".into(),
        }))
        .await
        .expect_err("already merged");
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(again.message().contains("merged"), "{}", again.message());

    // Reject: the decision is never carried out, even redelivered with approval auto.
    let rejected = client
        .reject(authed(RejectRequest {
            incident_key: "inc2".into(),
            by: "bob".into(),
            reason: "capacity is fine\nsecond line".into(),
        }))
        .await?
        .into_inner();
    assert_eq!(rejected.state(), RemediationState::Rejected);
    assert_eq!(rejected.message, "rejected by bob: capacity is fine");
    let late = handler
        .carry_out(
            decision("inc2", "checkout", Action::Scale, Approval::Auto),
            "checkout".into(),
            None,
            span(),
        )
        .await?;
    assert!(late.is_none(), "a rejected remediation is not carried out");
    assert!(
        main_file(&repo, "apps/checkout/kustomization.yaml")?
            .unwrap_or_default()
            .contains("count: 2")
    );

    // A failure (the file is missing), fixed in the repository, then retried.
    let failed = handler
        .carry_out(
            decision("inc3", "cart", Action::Rollback, Approval::Auto),
            "cart".into(),
            None,
            span(),
        )
        .await?
        .expect("an event");
    assert_eq!(failed.state(), RemediationState::Failed);
    assert!(failed.message.contains("does not exist"), "{}", failed.message);
    let tip = repo.branch_tip("main")?.expect("main");
    let cart_v1 = file("v1", 2).replace("checkout", "cart");
    let cart_v2 = file("v2", 2).replace("checkout", "cart");
    let added = repo.commit_file(
        "main",
        Some(&tip),
        &tip,
        "apps/cart/kustomization.yaml",
        &cart_v1,
        "cart v1",
        &author,
    )?;
    repo.commit_file(
        "main",
        Some(&added),
        &added,
        "apps/cart/kustomization.yaml",
        &cart_v2,
        "cart v2",
        &author,
    )?;
    let retried = client
        .retry(authed(RetryRequest {
            incident_key: "inc3".into(),
            by: "carol".into(),
        }))
        .await?
        .into_inner();
    assert_eq!(retried.state(), RemediationState::Merged, "{}", retried.message);
    assert_eq!((retried.from_value.as_str(), retried.to_value.as_str()), ("v2", "v1"));
    assert!(
        main_file(&repo, "apps/cart/kustomization.yaml")?
            .unwrap_or_default()
            .contains("newTag: v1")
    );

    // Named tokens: a reader may list but not approve; an on-call engineer's approval is
    // recorded under the token's name, whatever the caller says it is.
    handler
        .carry_out(
            decision("inc4", "checkout", Action::Scale, Approval::Required),
            "checkout".into(),
            None,
            span(),
        )
        .await?;
    let listed = client
        .list(bearer(ListRemediationsRequest::default(), "reader-token"))
        .await?
        .into_inner();
    assert!(listed.remediations.iter().any(|r| r.incident_key == "inc4"));
    let denied = client
        .approve(bearer(
            ApproveRequest {
                incident_key: "inc4".into(),
                by: "reader".into(),
            },
            "reader-token",
        ))
        .await
        .expect_err("a reader may not approve");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains("\"reader\" may not operate"),
        "{}",
        denied.message()
    );
    let approved = client
        .approve(bearer(
            ApproveRequest {
                incident_key: "inc4".into(),
                by: "mallory".into(),
            },
            "oncall-token",
        ))
        .await?
        .into_inner();
    assert_eq!(approved.state(), RemediationState::Merged, "{}", approved.message);
    assert!(
        approved.message.starts_with("approved by oncall-1"),
        "{}",
        approved.message
    );
    let stored = client
        .get(bearer(
            GetRemediationRequest {
                incident_key: "inc4".into(),
            },
            "reader-token",
        ))
        .await?
        .into_inner();
    assert!(stored.message.starts_with("approved by oncall-1"), "{}", stored.message);
    let wrong = client
        .get(bearer(
            GetRemediationRequest {
                incident_key: "inc4".into(),
            },
            "no-such-token",
        ))
        .await
        .expect_err("unknown token");
    assert_eq!(wrong.code(), Code::Unauthenticated);

    // Get and bad input.
    let got = client
        .get(authed(GetRemediationRequest {
            incident_key: "inc3".into(),
        }))
        .await?
        .into_inner();
    assert_eq!(got.state(), RemediationState::Merged);
    for (key, code) in [("../x", Code::InvalidArgument), ("nosuch", Code::NotFound)] {
        let status = client
            .get(authed(GetRemediationRequest {
                incident_key: key.into(),
            }))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code, "{key}: {}", status.message());
    }
    let bad = client
        .list(authed(ListRemediationsRequest {
            state: 99,
            ..Default::default()
        }))
        .await
        .expect_err("bad state");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("state:"), "{}", bad.message());

    // Each move was announced once.
    let states: Vec<(String, RemediationState)> = bus
        .messages()
        .into_iter()
        .filter(|m| m.subject.starts_with("selfheal.remediations."))
        .map(|m| RemediationEvent::decode(m.payload).map(|e| (e.incident_key.clone(), e.state())))
        .collect::<Result<_, _>>()?;
    use RemediationState::*;
    assert_eq!(
        states,
        [
            ("inc1".to_string(), Opened),
            ("inc2".to_string(), Opened),
            ("inc1".to_string(), Merged),
            ("inc2".to_string(), Rejected),
            ("inc3".to_string(), Failed),
            ("inc3".to_string(), Merged),
            ("inc4".to_string(), Opened),
            ("inc4".to_string(), Merged),
        ]
    );
    Ok(())
}
