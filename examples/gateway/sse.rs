//! Server-sent events: a response body that hands over one event per frame.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use hyper::body::Frame;
use serde_json::Value;

/// A stream of events, written as `text/event-stream`.
#[derive(Debug, Default)]
pub(crate) struct EventStream {
    events: VecDeque<Bytes>,
}

impl EventStream {
    /// Adds `data: <json>` (the OpenAI style: no event names).
    pub(crate) fn data(&mut self, data: &Value) {
        self.events
            .push_back(Bytes::from(format!("data: {data}\n\n")));
    }

    /// Adds `data: <text>` with text that is not JSON (`[DONE]`).
    pub(crate) fn raw_data(&mut self, text: &str) {
        self.events
            .push_back(Bytes::from(format!("data: {text}\n\n")));
    }

    /// Adds `event: <name>` and `data: <json>` (the Anthropic style).
    pub(crate) fn event(&mut self, name: &str, data: &Value) {
        self.events
            .push_back(Bytes::from(format!("event: {name}\ndata: {data}\n\n")));
    }
}

impl IntoResponse for EventStream {
    fn into_response(self) -> Response {
        let headers = [
            (CONTENT_TYPE, "text/event-stream; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
        ];
        (headers, Body::new(Frames(self.events))).into_response()
    }
}

/// The body: each event is its own frame, so a client sees them one by one.
struct Frames(VecDeque<Bytes>);

impl HttpBody for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(
            self.get_mut()
                .0
                .pop_front()
                .map(|event| Ok(Frame::data(event))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}
