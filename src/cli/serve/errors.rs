//! Errors as OpenAI's API returns them: a status and
//! `{"error": {"message", "type", "param", "code"}}`, where `param` names the field at fault.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault (`"temperature"`, `"messages[2].role"`).
    pub param: Option<String>,
}

impl ApiError {
    /// A request that cannot be served as it is: 400 naming `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.into(), param: Some(param.into()) }
    }

    /// A body that is not the JSON it should be: 400 (naming the field when serde can).
    pub fn body(param: Option<String>, message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.into(), param }
    }

    pub fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "missing or wrong API key: send `Authorization: Bearer KEY`".into(),
            param: None,
        }
    }

    /// The waiting queue is full: 429, to be retried later.
    pub fn overloaded(limit: usize) -> ApiError {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!("the server is at capacity ({limit} sequences running or waiting): retry later"),
            param: None,
        }
    }

    /// The engine failed while running the request.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, message: message.into(), param: None }
    }

    pub fn shutting_down() -> ApiError {
        ApiError { status: StatusCode::SERVICE_UNAVAILABLE, message: "the server is shutting down".into(), param: None }
    }

    pub fn not_found(path: &str) -> ApiError {
        ApiError { status: StatusCode::NOT_FOUND, message: format!("no route {path}"), param: None }
    }

    /// OpenAI's `type` for the status.
    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "invalid_request_error",
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::SERVICE_UNAVAILABLE => "service_unavailable_error",
            _ => "server_error",
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"error": {
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "code": self.status.as_u16(),
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.json())).into_response()
    }
}

/// A JSON body as `T`: a syntax error, a wrong type or a number out of range is a 400 that
/// names the field (`messages[0].content`) where there is one.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let param = (path != ".").then_some(path);
        ApiError::body(param, format!("invalid request body: {}", e.inner()))
    })?;
    de.end().map_err(|e| ApiError::body(None, format!("invalid request body: {e}")))?;
    Ok(value)
}
