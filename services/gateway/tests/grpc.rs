//! gRPC `selfheal.v1.Gateway` against the real server: same validation and deduplication as the
//! webhook, incidents readable and paged, and no call without the token.

use std::{collections::HashMap, sync::Arc};

use selfheal_bus::memory::MemoryBus;
use selfheal_config::Secret;
use selfheal_gateway::{Gateway, GatewayConfig, Listeners};
use selfheal_proto::{
    Timestamp,
    v1::{Alert, GetIncidentRequest, IngestRequest, ListIncidentsRequest, gateway_client::GatewayClient},
};
use selfheal_runtime::Service as _;
use tokio::net::TcpListener;
use tonic::{Code, Request};

const TOKEN: &str = "grpc-token";

fn alert(service: &str, status: &str) -> Alert {
    let labels: HashMap<String, String> = [
        ("alertname", "HighLatency"),
        ("service", service),
        ("namespace", "shop"),
        ("cluster", "c1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Alert {
        status: status.into(),
        labels,
        starts_at: Some(Timestamp {
            seconds: 1_764_000_000,
            nanos: 0,
        }),
        ..Default::default()
    }
}

fn authorized<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().expect("ascii"));
    request
}

#[tokio::test]
async fn ingest_get_and_list_incidents() -> anyhow::Result<()> {
    let bus = MemoryBus::default();
    let config = GatewayConfig {
        token: Some(Secret::new(TOKEN)),
        ..Default::default()
    };
    let listeners = Listeners {
        http: TcpListener::bind("127.0.0.1:0").await?,
        grpc: TcpListener::bind("127.0.0.1:0").await?,
    };
    let grpc_addr = listeners.grpc.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = Gateway::from_config(config).await?;
    let server = tokio::spawn(gateway.run(
        Arc::new(bus.clone()),
        listeners,
        Box::pin(async {
            let _ = stopped.await;
        }),
    ));
    let mut client = GatewayClient::connect(format!("http://{grpc_addr}")).await?;

    let unauthenticated = client
        .ingest(IngestRequest {
            alerts: vec![alert("cart", "firing")],
            source: String::new(),
        })
        .await;
    assert_eq!(unauthenticated.map_err(|s| s.code()).err(), Some(Code::Unauthenticated));

    let services = ["cart", "checkout", "payments", "search", "shipping"];
    let first = client
        .ingest(authorized(IngestRequest {
            alerts: services.iter().map(|s| alert(s, "firing")).collect(),
            source: "grafana".into(),
        }))
        .await?
        .into_inner();
    assert!(first.alerts.iter().all(|a| a.outcome == "opened"), "{first:?}");
    let again = client
        .ingest(authorized(IngestRequest {
            alerts: vec![alert("cart", "firing")],
            source: String::new(),
        }))
        .await?;
    assert_eq!(again.into_inner().alerts[0].outcome, "duplicate");
    let resolved = client
        .ingest(authorized(IngestRequest {
            alerts: vec![alert("cart", "resolved")],
            source: String::new(),
        }))
        .await?;
    assert_eq!(resolved.into_inner().alerts[0].outcome, "resolved");
    assert_eq!(bus.messages().len(), services.len() + 1);

    let bad = client
        .ingest(authorized(IngestRequest {
            alerts: vec![alert("cart", "firing"), alert("Not A Label", "firing")],
            source: String::new(),
        }))
        .await
        .expect_err("invalid service label");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("alerts[1].labels.service"), "{}", bad.message());

    let cart_key = first.alerts[0].incident_key.clone();
    let cart = client
        .get_incident(authorized(GetIncidentRequest { key: cart_key.clone() }))
        .await?
        .into_inner();
    assert_eq!(
        (cart.service.as_str(), cart.state.as_str(), cart.notifications),
        ("cart", "resolved", 3)
    );
    let missing = client
        .get_incident(authorized(GetIncidentRequest { key: "0000".into() }))
        .await;
    assert_eq!(missing.map_err(|s| s.code()).err(), Some(Code::NotFound));

    // Two pages of two, then one; and the filters.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_incidents(authorized(ListIncidentsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            }))
            .await?
            .into_inner();
        assert!(page.incidents.len() <= 2);
        seen.extend(page.incidents.into_iter().map(|i| i.key));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut expected: Vec<String> = first.alerts.iter().map(|a| a.incident_key.clone()).collect();
    expected.sort();
    assert_eq!(seen, expected);
    let firing = client
        .list_incidents(authorized(ListIncidentsRequest {
            state: "firing".into(),
            ..Default::default()
        }))
        .await?
        .into_inner();
    assert_eq!(firing.incidents.len(), services.len() - 1);
    let checkout = client
        .list_incidents(authorized(ListIncidentsRequest {
            service: "checkout".into(),
            ..Default::default()
        }))
        .await?
        .into_inner();
    assert_eq!(checkout.incidents.len(), 1);
    let bad_state = client
        .list_incidents(authorized(ListIncidentsRequest {
            state: "open".into(),
            ..Default::default()
        }))
        .await
        .expect_err("unknown state");
    assert_eq!(bad_state.code(), Code::InvalidArgument);

    let _ = stop.send(());
    server.await??;
    Ok(())
}
