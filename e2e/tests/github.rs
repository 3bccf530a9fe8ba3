//! The GitHub forge against the fake GitHub REST API (`selfheal_e2e::fake_github`), in process:
//! one pull request per incident across redeliveries, a failed first attempt and faults.

use std::{sync::Arc, time::Duration};

use axum::http::Method;
use selfheal_e2e::fake_github::{FakeGitHub, TOKEN, decision};
use selfheal_pr_controller::reconcile::{ReconcileError, Reconciler};
use selfheal_proto::v1::{Approval, Decision, RemediationEvent, RemediationState};

async fn reconcile(reconciler: &Arc<Reconciler>, decision: &Decision) -> Result<RemediationEvent, ReconcileError> {
    let (reconciler, decision) = (reconciler.clone(), decision.clone());
    tokio::task::spawn_blocking(move || reconciler.reconcile(&decision, "4bf92f3577b34da6a3ce929d0e0e4736"))
        .await
        .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pull_request_per_incident_across_redeliveries_a_crash_and_faults() -> anyhow::Result<()> {
    let github = FakeGitHub::start(&["v1.0.0", "v1.1.0", "v1.2.0"]).await?;
    let reconciler = github.reconciler(TOKEN)?;
    // The first delivery dies between the commit and the pull request: every attempt to open
    // it fails (3 attempts), so the delivery ends, unacked, with the branch made and no PR —
    // what a crash at that point leaves behind.
    github.fault(Method::POST, "/pulls", 502, &[], 3);
    // One 502 on reading a ref, later on: retried in place.
    let held = decision("inc1", Approval::Required);
    let first = reconcile(&reconciler, &held).await;
    let error = first.expect_err("the pull request could not be opened");
    assert!(error.is_transient(), "a 502 is worth retrying: {error}");
    assert!(!error.to_string().contains(TOKEN));
    assert!(
        github.with(|h| h.refs.contains_key("selfheal/inc1")),
        "the commit is on the branch"
    );
    assert_eq!(github.with(|h| h.pulls.len()), 0);
    assert_eq!(github.count("POST /repos/acme/gitops/pulls"), 3, "three attempts");

    // Three redeliveries: one pull request, found again each time. A 502 on the ref read and a
    // 502 on the pull request list are retried without the caller seeing them.
    github.fault(Method::GET, "/git/ref/heads/main", 502, &[], 1);
    github.fault(Method::GET, "/repos/acme/gitops/pulls", 502, &[], 1);
    let mut urls = vec![];
    for _ in 0..3 {
        let event = reconcile(&reconciler, &held).await?;
        assert_eq!(event.state(), RemediationState::Opened, "{}", event.message);
        assert_eq!(event.from_value, "v1.2.0");
        assert_eq!(event.to_value, "v1.1.0");
        urls.push(event.pull_request_url);
    }
    assert_eq!(urls, vec!["https://github.com/acme/gitops/pull/1"; 3]);
    let pull = github.with(|h| h.pulls.clone());
    assert_eq!(pull.len(), 1, "exactly one pull request");
    let pull = &pull[0];
    assert_eq!(pull.title, "fix(prod): roll back checkout to v1.1.0");
    assert_eq!(pull.labels, ["selfheal", "auto-remediation"]);
    for expected in [
        "rolls **checkout** back from `v1.2.0` to `v1.1.0`",
        "-    newTag: v1.2.0 # the release\n+    newTag: v1.1.0 # the release",
        "| error\\_rate | 0.12 |",
        "`4bf92f3577b34da6a3ce929d0e0e4736`",
        "[Alert source](http://prometheus:9090/graph?g0.expr=x)",
        "HighErrorRate (critical)",
    ] {
        assert!(pull.body.contains(expected), "{expected:?} not in\n{}", pull.body);
    }
    // The reason is the policy's text about an untrusted alert: inert in Markdown.
    assert!(pull.body.contains(r"\| \`rm -rf\` &lt;script&gt;"), "{}", pull.body);
    assert!(!pull.body.contains("<script>"), "{}", pull.body);
    assert!(
        github.with(|h| h.faults.iter().all(|f| f.remaining == 0)),
        "every fault was hit"
    );
    assert!(github.main_file().contains("v1.2.0"), "nothing merged without approval");

    // Approved: merged through the pull request, after a 403 rate limit with Retry-After.
    github.fault(
        Method::PUT,
        "/merge",
        403,
        &[("retry-after", "1"), ("x-ratelimit-remaining", "0")],
        1,
    );
    let approved = decision("inc1", Approval::Auto);
    let started = std::time::Instant::now();
    let merged = reconcile(&reconciler, &approved).await?;
    assert_eq!(merged.state(), RemediationState::Merged, "{}", merged.message);
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After was honoured");
    assert_eq!(
        github.count("PUT /repos/acme/gitops/pulls/1/merge"),
        2,
        "403 then merged"
    );
    let main_file = github.main_file();
    assert!(main_file.contains("    newTag: v1.1.0 # the release\n"), "{main_file}");
    assert!(main_file.starts_with("# checkout, production\n"), "comments stay");
    assert_eq!(
        merged.commit,
        github.with(|h| h.refs["main"].clone()),
        "the squash commit on main"
    );

    // Redelivered after the merge: nothing new.
    let again = reconcile(&reconciler, &approved).await?;
    assert_eq!(again.state(), RemediationState::Merged);
    assert_eq!(github.with(|h| h.pulls.len()), 1);
    assert_eq!(github.count("PUT /repos/acme/gitops/pulls/1/merge"), 2);

    // v1.1.0 fails too: the next incident's rollback skips what was rolled back from (v1.2.0,
    // recorded in the squash commit's trailers) and goes to v1.0.0.
    let next = reconcile(&reconciler, &decision("inc2", Approval::Auto)).await?;
    assert_eq!(next.state(), RemediationState::Merged, "{}", next.message);
    assert_eq!((next.from_value.as_str(), next.to_value.as_str()), ("v1.1.0", "v1.0.0"));
    assert!(github.main_file().contains("newTag: v1.0.0"));
    assert_eq!(github.with(|h| h.pulls.len()), 2, "one pull request per incident");
    assert_eq!(github.with(|h| h.unauthorized), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_end_the_remediation_and_errors_carry_no_token() -> anyhow::Result<()> {
    let github = FakeGitHub::start(&["v1.0.0", "v1.1.0"]).await?;
    // A wrong token: 401, final, not retried.
    let wrong = github.reconciler("ghp_wrong-token")?;
    let error = reconcile(&wrong, &decision("inc3", Approval::Auto))
        .await
        .expect_err("bad credentials");
    assert!(!error.is_transient(), "{error}");
    assert!(error.to_string().contains("401 Bad credentials"), "{error}");
    assert!(!error.to_string().contains("ghp_wrong-token"), "{error}");
    assert_eq!(github.with(|h| h.log.len()), 1, "a 401 is not retried");

    // A rate limit longer than max_wait: the decision comes back later instead of blocking.
    let reconciler = github.reconciler(TOKEN)?;
    github.fault(Method::GET, "/git/ref/heads/main", 429, &[("retry-after", "3600")], 1);
    let error = reconcile(&reconciler, &decision("inc3", Approval::Auto))
        .await
        .expect_err("rate limited");
    assert!(error.is_transient(), "{error}");
    assert!(error.to_string().contains("rate limited for 3600s"), "{error}");

    // 502 on every attempt: transient, after exactly `attempts` requests.
    github.fault(Method::GET, "/git/ref/heads/main", 502, &[], 3);
    let before = github.count("GET /repos/acme/gitops/git/ref/heads/main");
    let error = reconcile(&reconciler, &decision("inc3", Approval::Auto))
        .await
        .expect_err("502");
    assert!(
        error.is_transient() && error.to_string().contains("after 3 attempts"),
        "{error}"
    );
    assert_eq!(github.count("GET /repos/acme/gitops/git/ref/heads/main") - before, 3);
    assert!(
        !github.with(|h| h.refs.contains_key("selfheal/inc3")),
        "nothing written"
    );

    // And with GitHub answering again, the same decision goes through once.
    let event = reconcile(&reconciler, &decision("inc3", Approval::Auto)).await?;
    assert_eq!(event.state(), RemediationState::Merged, "{}", event.message);
    assert_eq!(github.with(|h| h.pulls.len()), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_rate_limit_is_waited_out_and_the_remediation_still_merges() -> anyhow::Result<()> {
    let github = FakeGitHub::start(&["v1.0.0", "v1.1.0", "v1.2.0"]).await?;
    let reconciler = github.reconciler(TOKEN)?;
    // Opening the pull request: a secondary rate limit naming its wait; merging it: one that
    // names none (the configured wait, a second in this fake's reconciler).
    github.secondary_rate_limit(Method::POST, "/pulls", &[("retry-after", "1")], 1);
    github.secondary_rate_limit(Method::PUT, "/merge", &[], 1);
    let started = std::time::Instant::now();
    let event = reconcile(&reconciler, &decision("inc5", Approval::Auto)).await?;
    assert_eq!(event.state(), RemediationState::Merged, "{}", event.message);
    assert!(started.elapsed() >= Duration::from_secs(2), "both waits were kept");
    assert_eq!(github.count("POST /repos/acme/gitops/pulls"), 2, "403, then opened");
    assert_eq!(
        github.count("PUT /repos/acme/gitops/pulls/1/merge"),
        2,
        "403, then merged"
    );
    assert!(github.main_file().contains("newTag: v1.1.0"));
    // A 403 that is no rate limit is still final.
    github.fault(Method::POST, "/pulls", 403, &[], 1);
    let error = reconcile(&reconciler, &decision("inc6", Approval::Auto))
        .await
        .expect_err("forbidden");
    assert!(!error.is_transient() && error.to_string().contains("403"), "{error}");
    Ok(())
}

/// Publishes `decision` on the bus as the policy would, with message id `msg_id`.
async fn publish_decision(
    js: &async_nats::jetstream::Context,
    msg_id: &str,
    decision: &Decision,
) -> anyhow::Result<u64> {
    use prost::Message as _;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    let stored = js
        .publish_with_headers("selfheal.decisions.checkout", headers, decision.encode_to_vec().into())
        .await?
        .await?;
    Ok(stored.sequence)
}

/// The real pr-controller process, killed with SIGKILL after it made the commit and while its
/// request to open the pull request is in flight; restarted, it opens the pull request once,
/// and three more deliveries of the decision add nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_commit_and_the_pull_request_still_gives_one_pull_request() -> anyhow::Result<()> {
    use selfheal_e2e::{Nats, Process, binary, free_port, wait_for, wait_ready};
    let temp = tempfile::tempdir()?;
    let nats = Nats::start().await?;
    let github = FakeGitHub::start(&["v1.0.0", "v1.1.0", "v1.2.0"]).await?;
    // The first request to open a pull request is held unanswered: the crash window.
    github.fault(Method::POST, "/repos/acme/gitops/pulls", 0, &[], 1);
    // And later a 502 on it, retried in place.
    github.fault(Method::POST, "/repos/acme/gitops/pulls", 502, &[], 1);
    let listen = format!("127.0.0.1:{}", free_port()?);
    let env = vec![
        ("SELFHEAL_PR_CONTROLLER_LISTEN", listen.clone()),
        (
            "SELFHEAL_PR_CONTROLLER_GRPC_LISTEN",
            format!("127.0.0.1:{}", free_port()?),
        ),
        ("SELFHEAL_PR_CONTROLLER_GRPC_TOKEN", "grpc-token".to_string()),
        ("SELFHEAL_PR_CONTROLLER_NATS_URL", nats.url()),
        ("SELFHEAL_PR_CONTROLLER_ACK_WAIT", "2s".to_string()),
        ("SELFHEAL_PR_CONTROLLER_GITHUB__REPOSITORY", "acme/gitops".to_string()),
        ("SELFHEAL_PR_CONTROLLER_GITHUB__API_URL", github.url.clone()),
        ("SELFHEAL_PR_CONTROLLER_GITHUB__TOKEN", TOKEN.to_string()),
    ];
    let program = binary("selfheal-pr-controller")?;
    let start = |name: &str| Process::start(name, &program, &[], &env, temp.path());
    let mut first = start("pr-controller-1")?;
    wait_ready(&format!("http://{listen}/readyz"), &mut first).await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let held = decision("crash1", Approval::Required);
    publish_decision(&js, "decision.crash1", &held).await?;

    wait_for(
        Duration::from_secs(20),
        "the request to open the pull request",
        || async { github.with(|h| h.held == 1).then_some(()) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", first.output()))?;
    first.kill().await?;
    // The decision is in nobody's hands now, and the bus says so: the consumer's lag.
    let bus = selfheal_bus::nats::NatsBus::connect(selfheal_bus::nats::NatsOptions::new(nats.url(), "e2e")).await?;
    assert_eq!(selfheal_bus::Bus::pending(&bus, "pr-controller").await?, 1);
    assert_eq!(selfheal_bus::Bus::pending(&bus, "no-such-consumer").await?, 0);
    assert!(
        github.with(|h| h.refs.contains_key("selfheal/crash1")),
        "the commit was made"
    );
    assert_eq!(github.with(|h| h.pulls.len()), 0, "no pull request yet");
    github.release();

    // Restarted: the unacked decision comes back after the ack wait.
    let mut second = start("pr-controller-2")?;
    wait_ready(&format!("http://{listen}/readyz"), &mut second).await?;
    wait_for(Duration::from_secs(30), "the pull request", || async {
        github.with(|h| (h.pulls.len() == 1).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", second.output()))?;

    // Three more deliveries of the same decision.
    let mut last = 0;
    for again in 1..=3 {
        last = publish_decision(&js, &format!("decision.crash1.again{again}"), &held).await?;
    }
    wait_for(
        Duration::from_secs(30),
        "the pr-controller to settle every delivery",
        || async {
            let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
                .get_stream("SELFHEAL")
                .await
                .ok()?
                .get_consumer("pr-controller")
                .await
                .ok()?;
            let info = consumer.info().await.ok()?;
            (info.ack_floor.stream_sequence >= last && info.num_ack_pending == 0).then_some(())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", second.output()))?;

    // The lag gauge comes back to zero on /metrics (sampled every 5 s).
    let client = reqwest::Client::new();
    wait_for(Duration::from_secs(15), "a zero consumer lag on /metrics", || async {
        let text = client
            .get(format!("http://{listen}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .any(|l| l == "selfheal_consumer_pending_messages{consumer=\"pr-controller\"} 0")
            .then_some(())
    })
    .await?;

    let pulls = github.with(|h| h.pulls.clone());
    assert_eq!(pulls.len(), 1, "exactly one pull request for the incident");
    assert_eq!(pulls[0].head, "selfheal/crash1");
    assert_eq!(pulls[0].title, "fix(prod): roll back checkout to v1.1.0");
    assert_eq!(
        github.with(|h| h.refs.keys().filter(|r| r.starts_with("selfheal/")).count()),
        1
    );
    assert_eq!(
        github.count("POST /repos/acme/gitops/pulls"),
        3,
        "held (crash), 502 (retried), created — and none for the three later deliveries"
    );
    assert!(
        github.main_file().contains("v1.2.0"),
        "approval required: nothing merged"
    );
    second.check_running()?;
    Ok(())
}
