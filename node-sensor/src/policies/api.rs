//! The policy host behind Tetragon's tracing-policy RPCs: the one place
//! its errors become gRPC codes, and its statuses Tetragon's messages.

use std::sync::Arc;

use parking_lot::Mutex;
use proto::tetragon::{
    TracingPolicyActionCounters, TracingPolicyMode, TracingPolicySelectorActionCounters, TracingPolicyState,
    TracingPolicyStats, TracingPolicyStatus,
};
use serving::api::PolicyControl;
use tonic::Status;

use super::{HostError, Mode, PolicyHost, SelectorCounts, State};

/// The sensor's policies, shared by start-up and the API.
#[derive(Clone)]
pub struct SharedPolicies(pub Arc<Mutex<PolicyHost>>);

fn status_of(e: HostError) -> Status {
    match &e {
        HostError::Invalid(_) => Status::invalid_argument(e.to_string()),
        HostError::Exists(_) => Status::already_exists(e.to_string()),
        HostError::NotFound(_) => Status::not_found(e.to_string()),
        HostError::Full => Status::resource_exhausted(e.to_string()),
        HostError::Kernel { .. } | HostError::MonitorOnly(_) | HostError::Managed { .. } => {
            Status::failed_precondition(e.to_string())
        }
    }
}

/// `f` with `host` locked, on a blocking thread: while another holds the
/// lock, only this call waits, not the runtime worker it was made on.
async fn locked_on_blocking_thread<H: Send + 'static, T: Send + 'static>(
    host: Arc<Mutex<H>>,
    f: impl FnOnce(&mut H) -> T + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(move || f(&mut host.lock()))
        .await
        .map_err(|_| Status::internal("the policy host's task failed before it answered"))
}

fn counters(c: &SelectorCounts) -> TracingPolicyActionCounters {
    TracingPolicyActionCounters {
        post: c.post,
        signal: c.signal,
        monitor_signal: c.monitor_signal,
        nopost: c.nopost,
        r#override: c.overrides,
        monitor_override: c.monitor_overrides,
        ..Default::default()
    }
}

impl SharedPolicies {
    /// Runs `f` with the host locked, on a blocking thread: loading a
    /// policy (verifying and attaching its programs) can take a while, and
    /// the sensor's one runtime worker is its ring reader's and its
    /// clients' (see `main`).
    async fn with_host<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut PolicyHost) -> T + Send + 'static,
    ) -> Result<T, Status> {
        locked_on_blocking_thread(self.0.clone(), f).await
    }

    /// `change` on a policy this API may change (one not managed by the
    /// relay or Kubernetes), on the host's thread (see [`Self::with_host`]).
    async fn local_change(
        &self,
        name: &str,
        namespace: &str,
        change: impl FnOnce(&mut PolicyHost, &str, &str) -> Result<(), HostError> + Send + 'static,
    ) -> Result<(), Status> {
        let (name, namespace) = (name.to_owned(), namespace.to_owned());
        self.with_host(move |host| host.check_local(&name, &namespace).and_then(|()| change(host, &name, &namespace)))
            .await?
            .map_err(status_of)
    }
}

#[tonic::async_trait]
impl PolicyControl for SharedPolicies {
    async fn add(&self, yaml: &str) -> Result<(), Status> {
        let yaml = yaml.to_owned();
        let result = self.with_host(move |host| host.add_yaml(&yaml)).await?;
        match &result {
            Ok(()) => tracing::info!("tracing policy added"),
            Err(e) => tracing::warn!(error = %e, "tracing policy refused"),
        }
        result.map_err(status_of)
    }

    async fn delete(&self, name: &str, namespace: &str) -> Result<(), Status> {
        self.local_change(name, namespace, |host, name, namespace| host.delete(name, namespace)).await
    }

    async fn set_mode(&self, name: &str, namespace: &str, monitor: bool) -> Result<(), Status> {
        self.local_change(name, namespace, move |host, name, namespace| host.set_mode(name, namespace, monitor)).await
    }

    async fn set_enabled(&self, name: &str, namespace: &str, enabled: bool) -> Result<(), Status> {
        self.local_change(name, namespace, move |host, name, namespace| {
            if enabled { host.enable(name, namespace) } else { host.disable(name, namespace) }
        })
        .await
    }

    async fn list(&self) -> Result<Vec<TracingPolicyStatus>, Status> {
        let list = self.with_host(|host| host.list()).await?;
        Ok(list
            .into_iter()
            .map(|p| {
                let (state, error) = match p.state {
                    State::Enabled => (TracingPolicyState::TpStateEnabled, String::new()),
                    State::Disabled => (TracingPolicyState::TpStateDisabled, String::new()),
                    State::Error(why) => (TracingPolicyState::TpStateLoadError, why),
                };
                #[allow(deprecated, reason = "Tetragon still fills `enabled`, and tetra reads it")]
                TracingPolicyStatus {
                    id: p.id,
                    name: p.name,
                    namespace: p.namespace,
                    sensors: p.sensors,
                    enabled: state == TracingPolicyState::TpStateEnabled,
                    error,
                    state: state as i32,
                    kernel_memory_bytes: p.kernel_memory_bytes,
                    mode: match p.mode {
                        Mode::Enforce => TracingPolicyMode::TpModeEnforce,
                        Mode::Monitor => TracingPolicyMode::TpModeMonitor,
                        Mode::MonitorOnly => TracingPolicyMode::TpModeMonitorOnly,
                    } as i32,
                    stats: Some(stats(p.events, &p.selector_counts)),
                    info: [p.origin.info(), p.scope.as_deref().unwrap_or_default()]
                        .into_iter()
                        .filter(|part| !part.is_empty())
                        .collect::<Vec<_>>()
                        .join("; "),
                    ..Default::default()
                }
            })
            .collect())
    }
}

/// The policy's counts: `post` is every event it sent; the rest sum its
/// selectors', which are also listed one by one.
fn stats(events: u64, hooks: &[super::HookSelectorCounts]) -> TracingPolicyStats {
    let mut total = SelectorCounts { post: events, ..Default::default() };
    let mut per_selector = Vec::new();
    for h in hooks {
        for (i, (label, c)) in h.selectors.iter().enumerate() {
            total.signal += c.signal;
            total.monitor_signal += c.monitor_signal;
            total.nopost += c.nopost;
            total.overrides += c.overrides;
            total.monitor_overrides += c.monitor_overrides;
            per_selector.push(TracingPolicySelectorActionCounters {
                hook: h.hook.clone(),
                hook_index: Some(proto::wkt::UInt32Value { value: h.hook_index }),
                selector_index: Some(proto::wkt::UInt32Value { value: i as u32 }),
                action_counters: Some(counters(c)),
                selector_label: label.clone(),
            });
        }
    }
    TracingPolicyStats { action_counters: Some(counters(&total)), selector_action_counters: per_selector }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    /// A policy load holds the host's lock while the verifier runs; on
    /// the sensor's one runtime worker (`main`), a policy RPC waiting for
    /// it must leave the worker to the ring reader and the clients.
    #[tokio::test(flavor = "current_thread")]
    async fn a_held_host_holds_up_only_the_call_that_needs_it() {
        let host = Arc::new(Mutex::new(0u32));
        let released = Arc::new(AtomicBool::new(false));
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        // The long load: holds the host until told (or, should the
        // runtime be blocked and never tell it, for at most 10 s).
        let load = std::thread::spawn({
            let (host, released) = (host.clone(), released.clone());
            move || {
                let guard = host.lock();
                held_tx.send(()).expect("the test waits for the lock");
                let _ = release_rx.recv_timeout(Duration::from_secs(10));
                released.store(true, Ordering::SeqCst);
                drop(guard);
            }
        });
        held_rx.recv().expect("the load holds the host");

        let call = tokio::spawn(locked_on_blocking_thread(host.clone(), |n| {
            *n += 1;
            *n
        }));
        // The call has started, and waits for the lock.
        tokio::task::yield_now().await;
        let ran_while_held = tokio::spawn({
            let released = released.clone();
            async move { !released.load(Ordering::SeqCst) }
        })
        .await
        .expect("the other task ends");
        assert!(ran_while_held, "another task on the runtime waited for the policy host's lock");
        assert!(!call.is_finished(), "the call ran without the lock");

        release_tx.send(()).expect("the load waits to be released");
        assert_eq!(call.await.expect("the call's task ends").expect("the host answers"), 1);
        load.join().expect("the load ends");
    }
}
