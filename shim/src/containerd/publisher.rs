//! Task events to containerd's `containerd.services.events.ttrpc.v1.Events`
//! service at `$TTRPC_ADDRESS`.
//!
//! A small queue feeds one task that (re)connects and forwards each event,
//! retrying a few times, so a slow containerd never blocks an RPC.

use std::time::{Duration, SystemTime};

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
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
    /// /tasks/oom: the container's cgroup hit its memory limit and the
    /// kernel killed a process (CRI reports `OOMKilled`).
    Oom(TaskOOM),
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
            Self::Oom(m) => (topics::TASK_OOM_EVENT_TOPIC, Box::new(m)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use containerd_shim_protos::protobuf::Message;
    use containerd_shim_protos::shim::events::ForwardRequest;
    use containerd_shim_protos::shim_async::{create_events, Events};
    use ttrpc::r#async::TtrpcContext;

    /// A stand-in for containerd's events service.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<ForwardRequest>>);

    #[async_trait::async_trait]
    impl Events for Recorder {
        async fn forward(
            &self,
            _: &TtrpcContext,
            req: ForwardRequest,
        ) -> ttrpc::Result<containerd_shim_protos::protobuf::well_known_types::empty::Empty>
        {
            self.0.lock().unwrap().push(req);
            Ok(Default::default())
        }
    }

    fn logger() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    #[tokio::test]
    async fn events_reach_containerd_with_topic_namespace_and_payload() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("events.sock");
        let rec = Arc::new(Recorder::default());
        let mut server = ttrpc::r#async::Server::new()
            .bind(&format!("unix://{}", sock.display()))
            .unwrap()
            .register_service(create_events(rec.clone()));
        server.start().await.unwrap();
        // A bare path, as containerd passes it in TTRPC_ADDRESS.
        let p = Publisher::start(Some(sock.display().to_string()), "k8s.io".into(), logger());
        let mut start = TaskStart::new();
        start.container_id = "c1".into();
        start.pid = 42;
        p.publish(Event::Start(start)).await;
        let mut exit = TaskExit::new();
        exit.container_id = "c1".into();
        exit.exit_status = 3;
        p.publish(Event::Exit(exit)).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while rec.0.lock().unwrap().len() < 2 {
            assert!(std::time::Instant::now() < deadline, "events never arrived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let got = rec.0.lock().unwrap().clone();
        let env = got[0].envelope.as_ref().unwrap();
        assert_eq!(env.topic, "/tasks/start");
        assert_eq!(env.namespace, "k8s.io");
        let any = env.event.as_ref().unwrap();
        assert_eq!(any.type_url, "containerd.events.TaskStart");
        let back = TaskStart::parse_from_bytes(&any.value).unwrap();
        assert_eq!((back.container_id.as_str(), back.pid), ("c1", 42));
        let env = got[1].envelope.as_ref().unwrap();
        assert_eq!(env.topic, "/tasks/exit");
        let back = TaskExit::parse_from_bytes(&env.event.value).unwrap();
        assert_eq!(back.exit_status, 3);
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn without_containerd_events_are_dropped_without_blocking() {
        let p = Publisher::start(None, "default".into(), logger());
        for _ in 0..2000 {
            let mut ev = TaskStart::new();
            ev.container_id = "c".into();
            tokio::time::timeout(Duration::from_secs(5), p.publish(Event::Start(ev)))
                .await
                .expect("publishing blocked");
        }
    }
}
