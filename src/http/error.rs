//! The HTTP error boundary: every refusal a client can see, with its status,
//! its code as openapi.yaml and the README list it, and any extra fields, rendered as one JSON shape.

use hyper::StatusCode;
use jiff::Timestamp;
use serde_json::{json, Map, Value};

use crate::admission::{Layer, Rejection};
use crate::domain::InvalidValue;
use crate::engine::EngineError;
use crate::reserve::Refusal;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the round opens at {opens_at}")]
    NotOpen { opens_at: Timestamp },
    #[error("the round has closed")]
    Closed,
    #[error("sold out")]
    SoldOut,
    #[error("the purchase limit is {limit} per shopper per round")]
    LimitExceeded { limit: u32 },
    #[error("only orders pending payment can be cancelled; this one is {status}")]
    NotCancellable { status: &'static str },
    #[error("this order cannot be paid; it is {status}")]
    NotPayable { status: &'static str },
    #[error("this transaction id already paid another order")]
    DuplicateTransaction,
    #[error("the amount does not match what is due ({due})")]
    AmountMismatch { due: String },
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyMismatch,
    #[error("a drop with this id exists")]
    DropExists,
    #[error("a promotion with this id exists or existed")]
    PromotionExists,
    #[error("{0}")]
    Undeliverable(String),
    #[error("a shopper keeps at most {max} addresses; delete one first")]
    TooManyAddresses { max: usize },
    #[error("only orders pending payment can be changed; this one is {status}")]
    NotEditable { status: &'static str },
    #[error("the payment intent is for {expected}")]
    MethodMismatch { expected: &'static str },
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("the order has no delivery address and the shopper no default one")]
    AddressRequired,
    #[error("this coupon is on another order")]
    CouponUsed,
    #[error("{0}")]
    CouponNotApplicable(String),
    #[error("a coupon batch with this id exists")]
    CouponBatchExists,
    #[error("this coupon is for verified students only")]
    StudentOnly,
    #[error("all coupons of this batch have been claimed")]
    CouponsGone,
    #[error("a shopper may claim {per_user} of this batch")]
    CouponLimit { per_user: u32 },
    #[error("this coupon batch is no longer valid")]
    CouponBatchExpired,
    #[error("too many requests ({}); retry after {retry_after} s", layer_text(*.layer))]
    RateLimited { layer: Layer, retry_after: u32 },
    #[error("the server is at capacity; retry shortly")]
    Overloaded,
    #[error("a backend is unavailable: {0}")]
    Unavailable(String),
    #[error("not allowed while the order is {status}")]
    InvalidTransition { status: &'static str },
    #[error("the window for this return has closed")]
    ReturnWindowClosed,
    #[error("an invoice was requested for this order already")]
    InvoiceExists,
    #[error("this refund id already refunded another order")]
    DuplicateRefund,
    #[error("{0}")]
    QueueRequired(&'static str),
    #[error("the waiting room opens at {opens_at}")]
    QueueNotOpen { opens_at: Timestamp },
    #[error("not in this drop's waiting room; join it first")]
    NotInQueue,
}

fn layer_text(layer: Layer) -> &'static str {
    match layer {
        Layer::Ip => "from this address",
        Layer::User => "from this account",
        Layer::Global | Layer::InFlight => "for the whole sale",
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            InvalidRequest(_) | AmountMismatch { .. } | MethodMismatch { .. } => {
                StatusCode::BAD_REQUEST
            }
            Unauthorized(_) => StatusCode::UNAUTHORIZED,
            NotFound(_) => StatusCode::NOT_FOUND,
            NotOpen { .. }
            | Closed
            | SoldOut
            | LimitExceeded { .. }
            | NotCancellable { .. }
            | NotPayable { .. }
            | DuplicateTransaction
            | DropExists
            | PromotionExists
            | TooManyAddresses { .. }
            | NotEditable { .. }
            | MethodNotAllowed(_)
            | AddressRequired
            | CouponUsed
            | CouponNotApplicable(_)
            | CouponBatchExists
            | CouponsGone
            | CouponLimit { .. }
            | CouponBatchExpired
            | InvalidTransition { .. }
            | ReturnWindowClosed
            | InvoiceExists
            | DuplicateRefund => StatusCode::CONFLICT,
            StudentOnly | QueueRequired(_) => StatusCode::FORBIDDEN,
            QueueNotOpen { .. } => StatusCode::CONFLICT,
            NotInQueue => StatusCode::NOT_FOUND,
            Undeliverable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            IdempotencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Overloaded | Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            InvalidRequest(_) => "invalid_request",
            Unauthorized(_) => "unauthorized",
            NotFound(_) => "not_found",
            NotOpen { .. } => "not_open",
            Closed => "closed",
            SoldOut => "sold_out",
            LimitExceeded { .. } => "limit_exceeded",
            NotCancellable { .. } => "not_cancellable",
            NotPayable { .. } => "not_payable",
            DuplicateTransaction => "duplicate_transaction",
            AmountMismatch { .. } => "amount_mismatch",
            PayloadTooLarge { .. } => "payload_too_large",
            BodyTimeout => "request_timeout",
            IdempotencyMismatch => "idempotency_mismatch",
            DropExists => "drop_exists",
            PromotionExists => "promotion_exists",
            Undeliverable(_) => "undeliverable",
            TooManyAddresses { .. } => "too_many_addresses",
            NotEditable { .. } => "not_editable",
            MethodMismatch { .. } => "method_mismatch",
            MethodNotAllowed(_) => "method_not_allowed",
            AddressRequired => "address_required",
            CouponUsed => "coupon_used",
            CouponNotApplicable(_) => "coupon_not_applicable",
            CouponBatchExists => "coupon_batch_exists",
            StudentOnly => "student_only",
            CouponsGone => "sold_out",
            CouponLimit { .. } => "limit_exceeded",
            CouponBatchExpired => "coupon_expired",
            RateLimited { .. } => "rate_limited",
            Overloaded => "overloaded",
            Unavailable(_) => "unavailable",
            InvalidTransition { .. } => "invalid_transition",
            ReturnWindowClosed => "return_window_closed",
            InvoiceExists => "invoice_exists",
            DuplicateRefund => "duplicate_refund",
            QueueRequired(_) => "queue_required",
            QueueNotOpen { .. } => "queue_not_open",
            NotInQueue => "not_in_queue",
        }
    }

    /// The outcome label of `dropgate_requests_total` for this refusal:
    /// the reserve path's refusals by name, other 409s `conflict`, other
    /// 4xx `invalid`.
    pub fn outcome(&self) -> &'static str {
        use ApiError::*;
        match self {
            Unauthorized(_) | StudentOnly => "unauthorized",
            QueueRequired(_) => "queue_required",
            NotOpen { .. } => "not_open",
            Closed => "closed",
            SoldOut => "sold_out",
            LimitExceeded { .. } => "limit_exceeded",
            RateLimited { layer, .. } => match layer {
                Layer::Ip => "rate_limited_ip",
                Layer::User => "rate_limited_user",
                Layer::Global | Layer::InFlight => "rate_limited_global",
            },
            Overloaded => "overloaded",
            Unavailable(_) => "unavailable",
            _ if self.status() == StatusCode::CONFLICT => "conflict",
            _ => "invalid",
        }
    }

    /// Seconds a client should wait before retrying, for the statuses that invite it.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            ApiError::RateLimited { retry_after, .. } => Some(*retry_after),
            ApiError::Overloaded | ApiError::Unavailable(_) => Some(1),
            _ => None,
        }
    }

    /// True when the connection cannot serve another request: the rest of
    /// an unread body would be taken for the next request.
    pub fn closes_connection(&self) -> bool {
        matches!(self, ApiError::BodyTimeout)
    }

    /// The body of a refusal that never varies, as `body()` renders it (a
    /// unit test holds the two equal).
    pub fn fixed_body(&self) -> Option<&'static str> {
        match self {
            ApiError::SoldOut => Some(r#"{"error":"sold_out","message":"sold out"}"#),
            ApiError::Closed => Some(r#"{"error":"closed","message":"the round has closed"}"#),
            ApiError::Overloaded => Some(
                r#"{"error":"overloaded","message":"the server is at capacity; retry shortly"}"#,
            ),
            _ => None,
        }
    }

    pub fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert("error".into(), json!(self.code()));
        body.insert("message".into(), json!(self.to_string()));
        match self {
            ApiError::NotOpen { opens_at } | ApiError::QueueNotOpen { opens_at } => {
                body.insert("opens_at".into(), json!(opens_at.to_string()));
            }
            ApiError::LimitExceeded { limit } => {
                body.insert("limit".into(), json!(limit));
            }
            ApiError::CouponLimit { per_user } => {
                body.insert("limit".into(), json!(per_user));
            }
            ApiError::RateLimited { layer, retry_after } => {
                body.insert("layer".into(), json!(layer.as_str()));
                body.insert("retry_after".into(), json!(retry_after));
            }
            ApiError::AmountMismatch { due } => {
                body.insert("amount_due".into(), json!(due));
            }
            ApiError::InvalidTransition { status } => {
                body.insert("status".into(), json!(status));
            }
            _ => {}
        }
        Value::Object(body)
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NoSuchSku { .. } => ApiError::NotFound(refusal.to_string()),
            Refusal::PresaleTermsRequired => ApiError::InvalidRequest(refusal.to_string()),
            Refusal::NotOpen { opens_at } => ApiError::NotOpen { opens_at },
            Refusal::Closed => ApiError::Closed,
            Refusal::SoldOut => ApiError::SoldOut,
            Refusal::LimitExceeded { limit } => ApiError::LimitExceeded { limit },
            Refusal::IdempotencyMismatch => ApiError::IdempotencyMismatch,
            Refusal::Busy(rejection) => rejection.into(),
            Refusal::ClockOutOfRange => ApiError::Unavailable(refusal.to_string()),
            Refusal::Unavailable(e) => e.into(),
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        match r.layer {
            Layer::InFlight => ApiError::Overloaded,
            layer => ApiError::RateLimited {
                layer,
                retry_after: r.retry_after_secs(),
            },
        }
    }
}

impl From<InvalidValue> for ApiError {
    fn from(e: InvalidValue) -> Self {
        ApiError::InvalidRequest(e.0)
    }
}

impl From<EngineError> for ApiError {
    /// The cause goes to the log, never to the client: backend text (a
    /// Redis `MOVED` with a node's address, a script error) is not theirs.
    fn from(e: EngineError) -> Self {
        tracing::warn!(error = %e, "engine unavailable");
        ApiError::Unavailable("the inventory engine is unavailable".into())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "order store failed");
        ApiError::Unavailable("the order store is unavailable".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_error_reaches_the_client_without_its_cause() {
        let cause = "MOVED 5931 127.0.0.1:7102";
        let err = ApiError::from(EngineError::unavailable(cause));
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!err.body().to_string().contains("MOVED"), "{}", err.body());
        assert!(!err.body().to_string().contains("7102"));
    }

    #[test]
    fn fixed_bodies_are_what_body_renders() {
        for err in [ApiError::SoldOut, ApiError::Closed, ApiError::Overloaded] {
            let fixed: Value = serde_json::from_str(err.fixed_body().unwrap()).unwrap();
            assert_eq!(fixed, err.body());
        }
    }
}
