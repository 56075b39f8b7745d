//! Task events to containerd's `containerd.services.events.ttrpc.v1.Events`
//! service at `$TTRPC_ADDRESS`.
//!
//! A small queue feeds one task that (re)connects and forwards each event,
//! retrying a few times, so a slow containerd never blocks an RPC.

use std::time::{Duration, SystemTime};

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::EventsClient;
use containerd_shim_protos::topics;
use slog::{warn, Logger};
use tokio::sync::mpsc;

/// A task event.
pub enum Event {
    /// /tasks/create
    Create(TaskCreate),
    /// /tasks/start
    Start(TaskStart),
    /// /tasks/exit
    Exit(TaskExit),
    /// /tasks/delete
    Delete(TaskDelete),
    /// /tasks/exec-added
    ExecAdded(TaskExecAdded),
    /// /tasks/exec-started
    ExecStarted(TaskExecStarted),
    /// /tasks/paused
    Paused(TaskPaused),
    /// /tasks/resumed
    Resumed(TaskResumed),
}

impl Event {
    fn topic_and_message(self) -> (&'static str, Box<dyn MessageDyn>) {
        match self {
            Self::Create(m) => (topics::TASK_CREATE_EVENT_TOPIC, Box::new(m)),
            Self::Start(m) => (topics::TASK_START_EVENT_TOPIC, Box::new(m)),
            Self::Exit(m) => (topics::TASK_EXIT_EVENT_TOPIC, Box::new(m)),
            Self::Delete(m) => (topics::TASK_DELETE_EVENT_TOPIC, Box::new(m)),
            Self::ExecAdded(m) => (topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(m)),
            Self::ExecStarted(m) => (topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(m)),
            Self::Paused(m) => (topics::TASK_PAUSED_EVENT_TOPIC, Box::new(m)),
            Self::Resumed(m) => (topics::TASK_RESUMED_EVENT_TOPIC, Box::new(m)),
        }
    }
}

/// Now as a protobuf timestamp.
pub fn now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut t = Timestamp::new();
    t.seconds = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    t.nanos = i32::try_from(d.subsec_nanos()).unwrap_or(0);
    t
}

/// Sends events to containerd.
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: mpsc::Sender<Event>,
}

impl Publisher {
    /// Starts the forwarder for `ttrpc_address` in `namespace`. Without an
    /// address (not started by containerd) events are dropped.
    pub fn start(ttrpc_address: Option<String>, namespace: String, log: Logger) -> Self {
        let (tx, mut rx) = mpsc::channel::<Event>(1024);
        tokio::spawn(async move {
            let Some(address) = ttrpc_address else {
                while rx.recv().await.is_some() {}
                return;
            };
            let mut client: Option<EventsClient> = None;
            while let Some(ev) = rx.recv().await {
                let (topic, msg) = ev.topic_and_message();
                let mut any = Any::new();
                any.type_url = msg.descriptor_dyn().full_name().to_string();
                any.value = msg.write_to_bytes_dyn().unwrap_or_default();
                let mut env = Envelope::new();
                env.timestamp = Some(now()).into();
                env.namespace = namespace.clone();
                env.topic = topic.to_string();
                env.event = Some(any).into();
                let mut req = ForwardRequest::new();
                req.envelope = Some(env).into();
                let mut sent = false;
                for attempt in 0..5 {
                    if client.is_none() {
                        let addr = if address.contains("://") {
                            address.clone()
                        } else {
                            format!("unix://{address}")
                        };
                        client = ttrpc::r#async::Client::connect(&addr)
                            .await
                            .ok()
                            .map(EventsClient::new);
                    }
                    if let Some(c) = &client {
                        match c
                            .forward(ttrpc::context::with_timeout(5_000_000_000), &req)
                            .await
                        {
                            Ok(_) => {
                                sent = true;
                                break;
                            }
                            Err(_) => client = None,
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                if !sent {
                    warn!(log, "could not publish event"; "topic" => topic);
                }
            }
        });
        Self { tx }
    }

    /// Queues an event.
    pub async fn publish(&self, ev: Event) {
        let _ = self.tx.send(ev).await;
    }
}
