//! One builder for the events unit and integration tests make by hand.

use proto::Timestamp;
use proto::tetragon::get_events_response::Event;
use proto::tetragon::{GetEventsResponse, Pod, Process, ProcessExec, ProcessExit};

/// An exec (or, with [`EventBuilder::exit`], an exit) event of `binary`.
pub fn exec(binary: &str) -> EventBuilder {
    EventBuilder {
        process: Process { binary: binary.into(), ..Default::default() },
        parent: None,
        node: String::new(),
        time: None,
        exit: false,
    }
}

#[derive(Debug, Clone)]
pub struct EventBuilder {
    process: Process,
    parent: Option<Process>,
    node: String,
    time: Option<Timestamp>,
    exit: bool,
}

impl EventBuilder {
    pub fn arguments(mut self, arguments: &str) -> Self {
        self.process.arguments = arguments.into();
        self
    }

    pub fn pid(mut self, pid: u32) -> Self {
        self.process.pid = Some(pid.into());
        self
    }

    pub fn exec_id(mut self, exec_id: &str) -> Self {
        self.process.exec_id = exec_id.into();
        self
    }

    /// The exec_id Tetragon computes: base64 of `node:ktime:pid`.
    pub fn exec_id_of(self, node: &str, ktime: u64, pid: u32) -> Self {
        use base64::Engine as _;
        let id = base64::engine::general_purpose::STANDARD.encode(format!("{node}:{ktime}:{pid}"));
        self.exec_id(&id).pid(pid)
    }

    /// The `docker` field (container id prefix).
    pub fn container(mut self, docker: &str) -> Self {
        self.process.docker = docker.into();
        self
    }

    /// A pod named `name` in `namespace`.
    pub fn pod(mut self, namespace: &str, name: &str) -> Self {
        self.process.pod = Some(Box::new(Pod { namespace: namespace.into(), name: name.into(), ..Default::default() }));
        self
    }

    /// A parent process of `binary` with `pid`, in the same pod.
    pub fn parent(mut self, binary: &str, pid: u32) -> Self {
        self.parent = Some(Process {
            binary: binary.into(),
            pid: Some(pid.into()),
            pod: self.process.pod.clone(),
            ..Default::default()
        });
        self
    }

    pub fn node(mut self, node: &str) -> Self {
        self.node = node.into();
        self
    }

    /// The event time, in nanoseconds since the epoch.
    pub fn at_nanos(mut self, nanos: i128) -> Self {
        self.time = Some(Timestamp::from_unix_nanos(nanos));
        self
    }

    pub fn at_seconds(self, seconds: i64) -> Self {
        self.at_nanos(i128::from(seconds) * 1_000_000_000)
    }

    /// An exit event instead of an exec.
    pub fn exit(mut self) -> Self {
        self.exit = true;
        self
    }

    pub fn build(self) -> GetEventsResponse {
        let event = if self.exit {
            Event::ProcessExit(ProcessExit { process: Some(self.process), parent: self.parent, ..Default::default() })
        } else {
            Event::ProcessExec(ProcessExec { process: Some(self.process), parent: self.parent, ancestors: vec![] })
        };
        GetEventsResponse { event: Some(event), node_name: self.node, time: self.time, ..Default::default() }
    }
}
