//! Server-sent events for the live pages: `/ui/events/runs` tells the Runs page that runs changed,
//! `/ui/events/runs/{run_id}` tells a Run page that its run changed. An event carries no state,
//! only the news; htmx (`hx-trigger="sse:…"`) fetches the fragment again, so a page of 100,000
//! runs costs one refresh per poll however many runs moved.
//!
//! Each stream opens with one event, so a page that connects (or reconnects after a dropped
//! connection) catches up on what changed while it was not listening. Streams end when the server
//! shuts down: axum's graceful shutdown waits for every open connection, and an open stream would
//! otherwise hold it forever.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};

use super::live::{Change, Watch};
use crate::api::ApiState;

/// `GET /ui/events/runs`: an event named `runs` whenever any run is created or changes status.
pub async fn runs(State(state): State<ApiState>) -> Response {
    let listener = Listener { changes: state.live().subscribe(), stop: state.stopping(), watch: None };
    sse(listener.events("runs", |_| true))
}

/// `GET /ui/events/runs/{run_id}`: an event named `run` whenever that run or its attempts change.
pub async fn run(State(state): State<ApiState>, Path(run_id): Path<String>) -> Response {
    let watch = Some(state.live().watch(&run_id));
    let listener = Listener { changes: state.live().subscribe(), stop: state.stopping(), watch };
    sse(listener.events("run", move |change| change.concerns(&run_id)))
}

fn sse<S: Stream<Item = Result<Event, Infallible>> + Send + 'static>(events: S) -> Response {
    // Proxies close idle connections; a comment every 15 s keeps the stream open through them.
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

struct Listener {
    changes: broadcast::Receiver<Change>,
    stop: watch::Receiver<bool>,
    /// Keeps the run's attempts watched while the stream is open.
    #[allow(dead_code)]
    watch: Option<Watch>,
}

impl Listener {
    /// One `name` event now, then one per change `wanted`, until the server stops.
    fn events(
        self,
        name: &'static str,
        wanted: impl Fn(&Change) -> bool + Send + 'static,
    ) -> impl Stream<Item = Result<Event, Infallible>> {
        let news = move || Ok(Event::default().event(name).data(name));
        futures_util::stream::unfold((self, wanted, true), move |(mut listener, wanted, first)| async move {
            if first {
                return Some((news(), (listener, wanted, false)));
            }
            loop {
                // Decided first, acted on after: the select borrows both halves of the listener.
                let tell = tokio::select! {
                    _ = listener.stop.wait_for(|stop| *stop) => None,
                    change = listener.changes.recv() => match change {
                        Ok(change) => Some(wanted(&change)),
                        // Fell behind: something it cares about may be among what it missed.
                        Err(RecvError::Lagged(_)) => Some(true),
                        Err(RecvError::Closed) => None,
                    },
                };
                match tell {
                    None => return None,
                    Some(true) => return Some((news(), (listener, wanted, false))),
                    Some(false) => continue,
                }
            }
        })
    }
}
