//! The engine thread: it owns the model and runs one [`BatchSession`] for the server's life.
//! Between steps it takes new requests and cancellations from a channel, so requests join
//! and leave the running batch; each sequence's tokens go back on its request's channel. A
//! request whose channel is closed (its client went away) is cancelled at once.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use smelt::models::batch::{BatchEvent, BatchSession, SeqId, SeqOptions, TokenLogprobs};
use smelt::models::{FinishReason, Request, SamplingParams};
use smelt::Model;
use tokio::sync::mpsc::UnboundedSender;

use super::metrics::Metrics;

/// What the HTTP side asks of the engine.
pub enum Command {
    /// Run these sequences: `requests[i]` is sequence `first + i` (choice `i`).
    Submit(Submission),
    /// Drop these sequences now (their client went away); unknown ids are ignored.
    Cancel(Vec<SeqId>),
}

pub struct Submission {
    pub first: SeqId,
    pub requests: Vec<Request>,
    pub options: SeqOptions,
    pub events: UnboundedSender<Event>,
    pub received: Instant,
}

/// What the engine tells a request, in order: `Accepted` or `Rejected`, then its choices'
/// tokens, each choice ending with `Finished`; `Failed` if the engine failed under it.
#[derive(Debug)]
pub enum Event {
    Accepted,
    /// The engine cannot run it (e.g. its KV need exceeds the whole cache).
    Rejected(String),
    Token {
        choice: usize,
        text: String,
        logprobs: Option<TokenLogprobs>,
    },
    Finished {
        choice: usize,
        text: String,
        finish: FinishReason,
    },
    Failed(String),
}

/// What the HTTP side needs to know of the loaded model.
pub struct Loaded {
    pub context: usize,
    pub vocab: usize,
    pub sampling_defaults: Option<SamplingParams>,
}

/// Starts the engine thread: it loads the model with `load` (a model stays on the thread that
/// made it: a GPU context is bound to it), reports what it loaded, then serves `commands`
/// until every sender is gone and its work is done.
pub fn spawn(
    load: impl FnOnce() -> Result<Model> + Send + 'static,
    commands: mpsc::Receiver<Command>,
    metrics: Arc<Metrics>,
) -> Result<(Loaded, std::thread::JoinHandle<Result<()>>)> {
    let (ready_tx, ready_rx) = mpsc::channel::<Result<Loaded>>();
    let handle = std::thread::Builder::new()
        .name("smelt-engine".into())
        .spawn(move || {
            let mut model = match load() {
                Ok(model) => model,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(());
                }
            };
            let config = model.config();
            let loaded = Loaded {
                context: config.max_position_embeddings,
                vocab: config.vocab_size,
                sampling_defaults: model.sampling_defaults().cloned(),
            };
            let mut session = match model.batch_session() {
                Ok(session) => session,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::Error::new(e).context("allocating the KV cache")));
                    return Ok(());
                }
            };
            metrics.publish(&session.usage());
            let _ = ready_tx.send(Ok(loaded));
            Engine { session: &mut session, routes: HashMap::new(), metrics: &metrics }.run(&commands)
        })
        .context("starting the engine thread")?;
    match ready_rx.recv() {
        Ok(loaded) => Ok((loaded?, handle)),
        Err(_) => match handle.join() {
            Ok(result) => result.and_then(|()| anyhow::bail!("the engine thread ended before loading the model")),
            Err(_) => anyhow::bail!("the engine thread panicked while loading the model"),
        },
    }
}

/// Where a live sequence's events go.
struct Route {
    choice: usize,
    events: UnboundedSender<Event>,
    received: Instant,
    last_token: Option<Instant>,
}

struct Engine<'s, 'm, 't> {
    session: &'s mut BatchSession<'m, 't>,
    routes: HashMap<SeqId, Route>,
    metrics: &'s Metrics,
}

impl Engine<'_, '_, '_> {
    fn run(mut self, commands: &mpsc::Receiver<Command>) -> Result<()> {
        loop {
            if self.session.is_idle() {
                // Nothing to compute: wait for work, or end when the server has gone.
                match commands.recv() {
                    Ok(command) => self.handle(command),
                    Err(_) => return Ok(()),
                }
            }
            while let Ok(command) = commands.try_recv() {
                self.handle(command);
            }
            if !self.session.is_idle() {
                self.step();
            }
            self.metrics.publish(&self.session.usage());
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Submit(s) => self.submit(s),
            Command::Cancel(seqs) => {
                for seq in seqs {
                    self.session.cancel(seq);
                    self.routes.remove(&seq);
                }
                self.metrics.publish(&self.session.usage());
            }
        }
    }

    /// Adds a request's sequences, then says it is accepted (and publishes the new usage),
    /// so that what a client sees after its answer's headers has the request counted.
    fn submit(&mut self, s: Submission) {
        if let Some(e) = s.requests.iter().find_map(|r| self.session.check(r).err()) {
            let _ = s.events.send(Event::Rejected(e.to_string()));
            return;
        }
        let mut early = Vec::new();
        for (choice, request) in s.requests.iter().enumerate() {
            let seq = s.first + choice;
            match self.session.add(seq, request, s.options) {
                Ok(None) => {
                    let route = Route { choice, events: s.events.clone(), received: s.received, last_token: None };
                    self.routes.insert(seq, route);
                }
                Ok(Some(done)) => early.push(Event::Finished { choice, text: String::new(), finish: done.finish }),
                Err(e) => early.push(Event::Failed(e.to_string())),
            }
        }
        self.metrics.publish(&self.session.usage());
        let _ = s.events.send(Event::Accepted);
        for event in early {
            let _ = s.events.send(event);
        }
    }

    /// One step; tokens go to their requests. A request whose receiver is gone is cancelled
    /// after the step, and a failed step fails every live request. The step's events wait
    /// until its usage is published, so a client that has a token sees metrics that count
    /// what made it (its KV blocks are taken in the step, not when the request is added).
    fn step(&mut self) {
        let mut outbox: Vec<(SeqId, UnboundedSender<Event>, Event)> = Vec::new();
        let (routes, metrics) = (&mut self.routes, self.metrics);
        let result = self.session.step(|event| match event {
            BatchEvent::Token { request, text, logprobs, .. } => {
                let Some(route) = routes.get_mut(&request) else { return };
                let now = Instant::now();
                match route.last_token.replace(now) {
                    None => metrics.time_to_first_token(now - route.received),
                    Some(last) => metrics.inter_token_latency(now - last),
                }
                metrics.generated_tokens(1);
                let event = Event::Token { choice: route.choice, text: text.to_string(), logprobs: logprobs.cloned() };
                outbox.push((request, route.events.clone(), event));
            }
            BatchEvent::Finished { request, text, completion } => {
                if let Some(route) = routes.remove(&request) {
                    let event =
                        Event::Finished { choice: route.choice, text: text.to_string(), finish: completion.finish };
                    outbox.push((request, route.events, event));
                }
            }
        });
        self.metrics.publish(&self.session.usage());
        let mut gone = Vec::new();
        for (seq, events, event) in outbox {
            let is_token = matches!(event, Event::Token { .. });
            if events.send(event).is_err() && is_token {
                gone.push(seq);
            }
        }
        if let Err(e) = result {
            tracing::error!("the engine step failed: {e}");
            for (seq, route) in self.routes.drain() {
                self.session.cancel(seq);
                let _ = route.events.send(Event::Failed(format!("the engine failed: {e}")));
            }
        }
        for seq in gone {
            self.session.cancel(seq);
            self.routes.remove(&seq);
        }
    }
}
