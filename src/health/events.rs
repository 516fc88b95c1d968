//! Events: an app errored, a memory restart, a failed health check, a disk over its threshold, a
//! failed job. Every event goes to citrusd's log; those listed in `[notify] events` also go to
//! `[notify] webhook` through a bounded queue that never blocks the caller.

use std::sync::RwLock;

use crate::config::{EventKind, NotifyConfig};
use crate::supervisor::EventSink;

use super::webhook::{Event, Webhook, WebhookConfig, WebhookStats};

struct Inner {
    /// The webhook and the URL it was started with (to restart it only when the URL changes).
    webhook: Option<(String, Webhook)>,
    events: Vec<EventKind>,
}

/// Another destination for every event (the fleet agent forwards them to the engine).
pub type Forward = Box<dyn Fn(EventKind, Option<&str>, &str) + Send + Sync>;

/// Where events go; reconfigured on config reload.
pub struct Notifier {
    host: String,
    inner: RwLock<Inner>,
    forward: RwLock<Option<Forward>>,
}

impl Notifier {
    /// A notifier for `config`; starts the webhook sender (on the current runtime) if one is set.
    pub fn new(config: &NotifyConfig) -> Notifier {
        let notifier = Notifier {
            host: crate::sys::hostname(),
            forward: RwLock::new(None),
            inner: RwLock::new(Inner {
                webhook: None,
                events: Vec::new(),
            }),
        };
        notifier.configure(config);
        notifier
    }

    /// Applies a reloaded `[notify]`.
    pub fn configure(&self, config: &NotifyConfig) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if inner.webhook.as_ref().map(|(u, _)| u) != config.webhook.as_ref() {
            inner.webhook = config
                .webhook
                .as_ref()
                .map(|url| (url.clone(), Webhook::start(WebhookConfig::new(url))));
        }
        inner.events = config.events.clone();
    }

    /// Sends every event to `forward` as well.
    pub fn forward(&self, forward: Forward) {
        *self.forward.write().unwrap_or_else(|e| e.into_inner()) = Some(forward);
    }

    /// The webhook's counters, when one is configured.
    pub fn stats(&self) -> Option<WebhookStats> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.webhook.as_ref().map(|(_, w)| w.stats())
    }
}

impl EventSink for Notifier {
    /// Logs the event, forwards it, and queues it for the webhook when it is one of
    /// `[notify] events`.
    fn emit(&self, kind: EventKind, app: Option<&str>, message: &str) {
        if let Some(f) = self
            .forward
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            f(kind, app, message);
        }
        tracing::warn!(event = kind.as_str(), app = app.unwrap_or("-"), "{message}");
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if let Some((_, webhook)) = inner
            .webhook
            .as_ref()
            .filter(|_| inner.events.contains(&kind))
        {
            webhook.send(Event {
                host: self.host.clone(),
                app: app.map(str::to_string),
                event: kind.as_str().to_string(),
                message: message.to_string(),
            });
        }
    }
}
