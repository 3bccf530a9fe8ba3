//! [`Gateway`]: the service, built from its config and run on its listeners.

use selfheal_bus::{SharedBus, nats::NatsOptions};
use selfheal_runtime::{Addresses, RunError, Service, Shutdown, StartError};

use crate::{config::GatewayConfig, grpc, http::app, ingest::AppState};

pub use selfheal_runtime::Listeners;

/// The gateway, built from its config with every setting checked.
pub struct Gateway {
    config: GatewayConfig,
    nats: selfheal_bus::config::CheckedNats,
    tls: Option<selfheal_runtime::grpc_tls::ServerTls>,
    grpc_tokens: selfheal_config::TokenCheck,
}

#[async_trait::async_trait]
impl Service for Gateway {
    type Config = GatewayConfig;
    const NAME: &'static str = "selfheal-gateway";
    const ENV_PREFIX: &'static str = "SELFHEAL_GATEWAY_";
    const ABOUT: &'static str = "selfheal's ingest: Alertmanager webhooks into the SELFHEAL stream.";

    /// Checks the tokens and HMAC keys (at least one of them must be set).
    async fn from_config(config: GatewayConfig) -> Result<Self, StartError> {
        config.hmac_keys()?;
        let nats = config.nats.check().map_err(|e| StartError::config(e.to_string()))?;
        let tls = selfheal_runtime::grpc_tls::ServerTls::from_config(&config.grpc_tls)?;
        let grpc_tokens = config.grpc_tokens()?;
        Ok(Self {
            config,
            nats,
            tls,
            grpc_tokens,
        })
    }

    fn addresses(&self) -> Addresses {
        Addresses {
            http: self.config.listen,
            grpc: self.config.grpc_listen,
        }
    }

    fn bus_options(&self) -> NatsOptions {
        // The gateway keeps the streams' settings (its publishes carry the ids the duplicate
        // window is for) and its incidents bucket's.
        let mut options = NatsOptions::new(&self.config.nats_url, Self::NAME)
            .with_config(self.nats.clone())
            .keeping(&[
                selfheal_bus::STREAM,
                selfheal_bus::dead::STREAM,
                crate::incidents::BUCKET,
            ]);
        options.duplicate_window = Some(self.config.duplicate_window);
        options.publish_timeout = self.config.publish_timeout;
        options
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests.
    async fn run(self, bus: SharedBus, listeners: Listeners, shutdown: Shutdown) -> Result<(), RunError> {
        let state = AppState::new(&self.config, bus).await?;
        let cancel = tokio_util::sync::CancellationToken::new();
        tracing::info!(http = %listeners.http.local_addr()?, grpc = %listeners.grpc.local_addr()?, "gateway listening");
        let grpc = selfheal_runtime::grpc_server(<selfheal_proto::v1::gateway_server::GatewayServer<grpc::GatewayService> as tonic::server::NamedService>::NAME)
            .await?
            .add_service(grpc::server(state.clone(), self.grpc_tokens));
        let servers = selfheal_runtime::serve(listeners, grpc, self.tls, app(state), self.config.http, &cancel);
        shutdown.await;
        cancel.cancel();
        servers.join().await
    }
}
