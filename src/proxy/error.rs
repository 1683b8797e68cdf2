//! Errors on the primary path, each knowing where it happened, and their one mapping to HTTP.
//!
//! Responses made here are short plain text: a status and a reason a human can act on.
//! Mirror failures never come here: they are counted and logged on the mirror path.

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::Full;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client's request is not one we forward.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// No route matches the request.
    #[error("no route for {0}")]
    NoRoute(String),
    /// The chosen service has no endpoint.
    #[error("service {0} has no endpoint")]
    NoEndpoint(String),
    /// Could not connect to the primary.
    #[error("upstream connect error ({upstream}): {reason}")]
    Connect { upstream: String, reason: String },
    /// The primary's connection failed after connecting (reset, closed, bad response).
    #[error("upstream error ({upstream}): {reason}")]
    Upstream { upstream: String, reason: String },
    /// The request head is over the size or field-count limit.
    #[error("request header fields too large: {0}")]
    HeadTooLarge(&'static str),
    /// The request line is over the size limit.
    #[error("request URI too long")]
    UriTooLong,
    /// The request body is over the size limit.
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(u64),
    /// The client stopped sending its request body.
    #[error("client body timeout: no request body data for {0:?}")]
    ClientBodyTimeout(std::time::Duration),
    /// The primary did not answer within the route's timeout.
    #[error("upstream timeout ({upstream}) after {after_ms} ms")]
    Timeout { upstream: String, after_ms: u128 },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::HeadTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::ClientBodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::NoEndpoint(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The response the client gets.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let mut r = Response::new(Full::new(Bytes::from(format!("{self}\n"))));
        *r.status_mut() = self.status();
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::HeadTooLarge(_)
                | ProxyError::UriTooLong
                | ProxyError::ClientBodyTimeout(_)
                | ProxyError::BodyTooLarge(_)
        ) {
            // Framing we refused may leave the connection in an unknown state; an unread body
            // (413 before reading it) is not worth draining.
            r.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

impl From<super::guard::Refusal> for ProxyError {
    fn from(r: super::guard::Refusal) -> Self {
        use super::guard::Refusal;
        match r {
            Refusal::Malformed(why) => ProxyError::BadRequest(why),
            Refusal::HeadTooLarge(why) => ProxyError::HeadTooLarge(why),
            Refusal::UriTooLong => ProxyError::UriTooLong,
        }
    }
}

/// An error and its causes on one line: `a: b: c`, without repeats.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let c = ProxyError::Connect {
            upstream: "127.0.0.1:1".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(c.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            c.to_string(),
            "upstream connect error (127.0.0.1:1): connection refused"
        );
        let t = ProxyError::Timeout {
            upstream: "x".into(),
            after_ms: 5,
        };
        assert_eq!(t.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            ProxyError::BadRequest("x").to_response().headers()[CONNECTION],
            "close"
        );
    }

    #[test]
    fn chain_skips_repeats() {
        let inner = std::io::Error::other("refused");
        assert_eq!(error_chain(&inner), "refused");
    }
}
