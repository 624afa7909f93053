//! The demo's stand-ins, served only while the server runs with the
//! built-in demo secrets (which are public, and refused off loopback): a
//! sign-in by name that mints a shopper token, a payment gateway that pays
//! and refunds, and a carrier that ships and delivers. Each stand-in
//! applies the very notice its real counterpart would sign, through the
//! same code, so a newcomer can go from `cargo run --release` to a paid,
//! delivered order in the browser. With real secrets every one is 404.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::ApiError;
use super::json::{json, parse, read_body, HttpResponse};
use super::{after_sale, pages, payments};
use crate::app::App;
use crate::domain::UserId;

/// How long a demo sign-in lasts.
const DEMO_TOKEN_SECS: u64 = 12 * 3600;

/// Which stand-ins this server runs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DemoFeatures {
    /// `POST /demo/v1/sign-in` (the JWT secret is the demo's).
    pub sign_in: bool,
    /// `/demo/gateway`, `POST /demo/v1/payments` and `/demo/v1/refunds`.
    pub gateway: bool,
    /// `POST /demo/v1/logistics`.
    pub carrier: bool,
    /// The admin token is the demo's (public): the operator page says it.
    pub admin_token: bool,
}

impl DemoFeatures {
    pub fn of(app: &App) -> Self {
        let demo = app.secrets.demo_fields();
        Self {
            sign_in: demo.contains(&"jwt_secret"),
            gateway: demo.contains(&"payment_secret"),
            carrier: demo.contains(&"logistics_secret"),
            admin_token: demo.contains(&"admin_token"),
        }
    }
}

/// The stand-ins' endpoints.
#[derive(Debug, Clone, Copy)]
pub enum StandIn {
    SignIn,
    GatewayPage,
    Pay,
    Refund,
    Ship,
}

fn not_here() -> ApiError {
    ApiError::NotFound("this server runs with real secrets: no demo stand-ins".into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    name: String,
    #[serde(default)]
    student: bool,
}

pub async fn serve(
    app: &App,
    stand_in: StandIn,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let features = DemoFeatures::of(app);
    let allowed = match stand_in {
        StandIn::SignIn => features.sign_in,
        StandIn::GatewayPage | StandIn::Pay | StandIn::Refund => features.gateway,
        StandIn::Ship => features.carrier,
    };
    if !allowed {
        return Err(not_here());
    }
    match stand_in {
        StandIn::GatewayPage => pages::serve("/demo/gateway", &req),
        StandIn::SignIn => sign_in(app, &read_body(req, &app.settings).await?),
        StandIn::Pay => payments::apply(app, &read_body(req, &app.settings).await?).await,
        StandIn::Refund => {
            after_sale::apply_refund(app, &read_body(req, &app.settings).await?).await
        }
        StandIn::Ship => {
            after_sale::apply_logistics(app, &read_body(req, &app.settings).await?).await
        }
    }
}

/// `POST /demo/v1/sign-in` `{"name", "student"?}`: a token for that name.
fn sign_in(app: &App, body: &[u8]) -> Result<HttpResponse, ApiError> {
    let ask: SignIn = parse(body)?;
    let user = UserId::parse(ask.name.trim()).map_err(|_| {
        ApiError::InvalidRequest(
            "name must be 1-64 letters, digits, '_', '.' or '-' (it becomes the user id)".into(),
        )
    })?;
    let token = crate::auth::mint(&app.secrets.jwt_secret, &user, DEMO_TOKEN_SECS, ask.student);
    Ok(json(
        StatusCode::CREATED,
        &json!({"token": token, "user": user.as_str(), "student": ask.student, "expires_in": DEMO_TOKEN_SECS}),
    ))
}
