//! What every gRPC call of the CLI shares.

use selfheal_config::Secret;
use tonic::Request;

/// `message` with the bearer token the services check.
pub fn authorized<T>(message: T, token: &Secret) -> anyhow::Result<Request<T>> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {}", token.expose()).parse()?);
    Ok(request)
}
