//! A shopper's delivery addresses: add, list, delete. Names, phones and
//! addresses are personal data: they are answered to their owner only and
//! never logged.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

use super::error::ApiError;
use super::json::{json, parse, read_body, HttpResponse};
use super::shopper::authenticate;
use crate::address::{Address, AddressRefusal, NewAddress, MAX_PER_SHOPPER};
use crate::app::App;
use crate::store::AddOutcome;

pub async fn add(app: &App, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let shopper = authenticate(app, &req)?;
    let body = read_body(req, &app.settings).await?;
    let new: NewAddress = parse(&body)?;
    let (destination, default) = new.check().map_err(|refusal| match refusal {
        AddressRefusal::Invalid(message) => ApiError::InvalidRequest(message),
        AddressRefusal::Undeliverable(message) => ApiError::Undeliverable(message),
    })?;
    let address = Address {
        id: uuid::Uuid::now_v7().to_string(),
        destination,
        default,
        created_at: app.clock.now(),
    };
    match app.store.add_address(shopper.user, address).await? {
        AddOutcome::Added(address) => Ok(json(StatusCode::CREATED, &address)),
        AddOutcome::TooMany => Err(ApiError::TooManyAddresses {
            max: MAX_PER_SHOPPER,
        }),
    }
}

pub async fn list(app: &App, req: &Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let shopper = authenticate(app, req)?;
    let addresses = app.store.addresses(shopper.user).await?;
    Ok(json(StatusCode::OK, &json!({ "addresses": addresses })))
}

pub async fn delete(
    app: &App,
    id: &str,
    req: &Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let shopper = authenticate(app, req)?;
    if app
        .store
        .delete_address(shopper.user, id.to_owned())
        .await?
    {
        Ok(json(StatusCode::OK, &json!({ "id": id, "deleted": true })))
    } else {
        Err(ApiError::NotFound("no such address".into()))
    }
}
