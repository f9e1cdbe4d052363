//! The network-namespace filter stage (`--only-own-netns`): only events of
//! processes in one network namespace go on, so several sensors on one
//! kernel each report their own "node" (the cluster tests run this way).

use proto::tetragon::GetEventsResponse;

#[derive(Debug, Clone, Copy)]
pub struct NetnsFilter {
    inum: u32,
}

impl NetnsFilter {
    pub fn new(inum: u32) -> Self {
        NetnsFilter { inum }
    }

    /// Whether the event's process is in the namespace (an event without
    /// namespace data is not).
    pub fn passes(&self, event: &GetEventsResponse) -> bool {
        let net = events::subject::process(event).and_then(|p| p.ns.as_ref()).and_then(|n| n.net).map(|n| n.inum);
        net == Some(self.inum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::tetragon::get_events_response::Event;
    use proto::tetragon::{Namespace, Namespaces, Process, ProcessExec};

    fn in_netns(inum: Option<u32>) -> GetEventsResponse {
        GetEventsResponse {
            event: Some(Event::ProcessExec(ProcessExec {
                process: Some(Process {
                    ns: inum.map(|inum| {
                        Box::new(Namespaces { net: Some(Namespace { inum, is_host: false }), ..Default::default() })
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_namespace_passes() {
        let f = NetnsFilter::new(4026531840);
        assert!(f.passes(&in_netns(Some(4026531840))));
        assert!(!f.passes(&in_netns(Some(4026532000))));
        assert!(!f.passes(&in_netns(None)), "no namespace data: not known to be ours");
    }
}
