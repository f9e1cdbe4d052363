//! `tetragon.FineGuidanceSensors` over any event source: the sensor serves
//! its bus, the relay its merged history and bus; request checking, the
//! stream type, health and version answers are the same code for both.

use std::pin::Pin;
use std::sync::Arc;

use proto::shared::OutEvent;
use proto::shared::fine_guidance_sensors_server::{FineGuidanceSensors, FineGuidanceSensorsServer};
use proto::tetragon::{
    AddTracingPolicyRequest, AddTracingPolicyResponse, ConfigFlag, ConfigureTracingPolicyRequest,
    ConfigureTracingPolicyResponse, DeleteTracingPolicyRequest, DeleteTracingPolicyResponse,
    DisableTracingPolicyRequest, DisableTracingPolicyResponse, DumpProcessCacheReqArgs, DumpProcessCacheResArgs,
    EnableTracingPolicyRequest, EnableTracingPolicyResponse, GetDebugRequest, GetDebugResponse, GetEventsRequest,
    GetHealthStatusRequest, GetHealthStatusResponse, GetVersionRequest, GetVersionResponse, HealthStatus,
    HealthStatusResult, HealthStatusType, ListTracingPoliciesRequest, ListTracingPoliciesResponse, LogLevel,
    ProcessInternal, TracingPolicyMode, TracingPolicyStatus, get_debug_request, get_debug_response,
};
use tokio_stream::{Stream, StreamExt};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

/// Largest request accepted from a client (requests are filters; events
/// flow the other way).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// A stream of events as a server sends it.
pub type EventStream = Pin<Box<dyn Stream<Item = OutEvent> + Send>>;

/// A process-cache dump on its way.
pub type DumpFuture = Pin<Box<dyn std::future::Future<Output = Result<Vec<ProcessInternal>, Status>> + Send>>;

/// What a daemon serves through Tetragon's API.
pub trait EventSource: Send + Sync + 'static {
    /// `GetVersion`'s answer.
    fn version(&self) -> &'static str;
    /// The events for a subscriber with these (already compiled) filters.
    fn subscribe(&self, request: &GetEventsRequest, filters: events::RequestFilters) -> EventStream;
    /// `GetHealth`'s details: counters, `key=value` separated by spaces.
    fn health(&self) -> String;
    /// `GetDebug`'s process-cache dump; `None` where the daemon keeps no
    /// process cache.
    fn dump_process_cache(&self, _args: DumpProcessCacheReqArgs) -> Option<DumpFuture> {
        None
    }
    /// The tracing policies this daemon loads; `None` where it loads none.
    fn policies(&self) -> Option<&dyn PolicyControl> {
        None
    }
}

/// Tetragon's tracing-policy RPCs, as a daemon that loads policies serves
/// them. Errors are already the gRPC status the client gets.
/// Async: a relay on the backbone changes the cluster's policies in a
/// JetStream bucket.
#[tonic::async_trait]
pub trait PolicyControl: Send + Sync {
    async fn add(&self, yaml: &str) -> Result<(), Status>;
    async fn delete(&self, name: &str, namespace: &str) -> Result<(), Status>;
    async fn set_enabled(&self, name: &str, namespace: &str, enabled: bool) -> Result<(), Status>;
    /// Enforcement off (`monitor`) or on.
    async fn set_mode(&self, name: &str, namespace: &str, monitor: bool) -> Result<(), Status>;
    async fn list(&self) -> Result<Vec<TracingPolicyStatus>, Status>;
}

/// Largest policy document taken by `AddTracingPolicy`.
pub const MAX_POLICY_BYTES: usize = policy::MAX_POLICY_BYTES;

/// The log level in force, as Tetragon names it.
fn current_log_level() -> LogLevel {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::OFF | LevelFilter::ERROR => LogLevel::Error,
        LevelFilter::WARN => LogLevel::Warn,
        LevelFilter::INFO => LogLevel::Info,
        LevelFilter::DEBUG => LogLevel::Debug,
        LevelFilter::TRACE => LogLevel::Trace,
    }
}

/// The generated service's implementation over an [`EventSource`].
pub struct TetragonApi<S> {
    source: Arc<S>,
    /// Certificate roles are checked (mTLS): changing policies then needs
    /// an admin certificate.
    enforce_roles: bool,
}

impl<S: EventSource> TetragonApi<S> {
    fn policy_control(&self) -> Result<&dyn PolicyControl, Status> {
        self.source.policies().ok_or_else(|| Status::unimplemented("this server loads no tracing policies"))
    }

    /// The policy control, for a call that changes policies: admins only.
    fn policy_change<T>(&self, request: &Request<T>, what: &str) -> Result<&dyn PolicyControl, Status> {
        tls::auth::require_admin(request, self.enforce_roles, what)?;
        self.policy_control()
    }
}

type GrpcStream = Pin<Box<dyn Stream<Item = Result<OutEvent, Status>> + Send>>;

#[tonic::async_trait]
impl<S: EventSource> FineGuidanceSensors for TetragonApi<S> {
    type GetEventsStream = GrpcStream;

    async fn get_events(&self, request: Request<GetEventsRequest>) -> Result<Response<GrpcStream>, Status> {
        let peer = request.remote_addr().map(|a| a.to_string());
        let request = request.into_inner();
        let mut filters = events::RequestFilters::compile(&request)?;
        filters.client = peer;
        let stream = self.source.subscribe(&request, filters);
        Ok(Response::new(Box::pin(stream.map(Ok))))
    }

    async fn get_health(
        &self,
        _: Request<GetHealthStatusRequest>,
    ) -> Result<Response<GetHealthStatusResponse>, Status> {
        Ok(Response::new(GetHealthStatusResponse {
            health_status: vec![HealthStatus {
                event: HealthStatusType::Status as i32,
                status: HealthStatusResult::HealthStatusRunning as i32,
                details: format!("running; {}", self.source.health()),
            }],
        }))
    }

    async fn add_tracing_policy(
        &self,
        request: Request<AddTracingPolicyRequest>,
    ) -> Result<Response<AddTracingPolicyResponse>, Status> {
        let control = self.policy_change(&request, "AddTracingPolicy")?;
        let yaml = request.into_inner().yaml;
        if yaml.len() > MAX_POLICY_BYTES {
            return Err(Status::invalid_argument(format!(
                "the policy has {} bytes; the limit is {MAX_POLICY_BYTES}",
                yaml.len()
            )));
        }
        control.add(&yaml).await?;
        Ok(Response::new(AddTracingPolicyResponse {}))
    }

    async fn delete_tracing_policy(
        &self,
        request: Request<DeleteTracingPolicyRequest>,
    ) -> Result<Response<DeleteTracingPolicyResponse>, Status> {
        let control = self.policy_change(&request, "DeleteTracingPolicy")?;
        let r = request.into_inner();
        control.delete(&r.name, &r.namespace).await?;
        Ok(Response::new(DeleteTracingPolicyResponse {}))
    }

    async fn list_tracing_policies(
        &self,
        _: Request<ListTracingPoliciesRequest>,
    ) -> Result<Response<ListTracingPoliciesResponse>, Status> {
        Ok(Response::new(ListTracingPoliciesResponse { policies: self.policy_control()?.list().await? }))
    }

    async fn configure_tracing_policy(
        &self,
        request: Request<ConfigureTracingPolicyRequest>,
    ) -> Result<Response<ConfigureTracingPolicyResponse>, Status> {
        let control = self.policy_change(&request, "ConfigureTracingPolicy")?;
        let r = request.into_inner();
        let monitor = match r.mode.map(TracingPolicyMode::try_from) {
            None => None,
            Some(Ok(TracingPolicyMode::TpModeEnforce)) => Some(false),
            Some(Ok(TracingPolicyMode::TpModeMonitor)) => Some(true),
            Some(_) => return Err(Status::invalid_argument("mode: TP_MODE_ENFORCE or TP_MODE_MONITOR")),
        };
        if let Some(monitor) = monitor {
            control.set_mode(&r.name, &r.namespace, monitor).await?;
        }
        if let Some(enable) = r.enable {
            control.set_enabled(&r.name, &r.namespace, enable).await?;
        }
        Ok(Response::new(ConfigureTracingPolicyResponse {}))
    }

    async fn enable_tracing_policy(
        &self,
        request: Request<EnableTracingPolicyRequest>,
    ) -> Result<Response<EnableTracingPolicyResponse>, Status> {
        let control = self.policy_change(&request, "EnableTracingPolicy")?;
        let r = request.into_inner();
        control.set_enabled(&r.name, &r.namespace, true).await?;
        Ok(Response::new(EnableTracingPolicyResponse {}))
    }

    async fn disable_tracing_policy(
        &self,
        request: Request<DisableTracingPolicyRequest>,
    ) -> Result<Response<DisableTracingPolicyResponse>, Status> {
        let control = self.policy_change(&request, "DisableTracingPolicy")?;
        let r = request.into_inner();
        control.set_enabled(&r.name, &r.namespace, false).await?;
        Ok(Response::new(DisableTracingPolicyResponse {}))
    }

    async fn get_version(&self, _: Request<GetVersionRequest>) -> Result<Response<GetVersionResponse>, Status> {
        Ok(Response::new(GetVersionResponse { version: self.source.version().to_owned() }))
    }

    async fn get_debug(&self, request: Request<GetDebugRequest>) -> Result<Response<GetDebugResponse>, Status> {
        let request = request.into_inner();
        let arg = match ConfigFlag::try_from(request.flag) {
            Ok(ConfigFlag::LogLevel) => get_debug_response::Arg::Level(current_log_level() as i32),
            Ok(ConfigFlag::DumpProcessCache) => {
                let args = match request.arg {
                    Some(get_debug_request::Arg::Dump(args)) => args,
                    None => DumpProcessCacheReqArgs::default(),
                };
                let dump = self
                    .source
                    .dump_process_cache(args)
                    .ok_or_else(|| Status::unimplemented("this server keeps no process cache to dump"))?;
                get_debug_response::Arg::Processes(DumpProcessCacheResArgs { processes: dump.await? })
            }
            Err(_) => return Err(Status::invalid_argument(format!("unknown GetDebug flag {}", request.flag))),
        };
        Ok(Response::new(GetDebugResponse { flag: request.flag, arg: Some(arg) }))
    }
}

/// The service, ready to add to a router: requests bounded, and with
/// `require_role`, only peers with a client or admin certificate admitted
/// (and only admins may change policies).
pub fn tetragon_service<S: EventSource>(
    source: Arc<S>,
    require_role: bool,
) -> InterceptedService<FineGuidanceSensorsServer<TetragonApi<S>>, tls::auth::RoleCheck> {
    InterceptedService::new(
        FineGuidanceSensorsServer::new(TetragonApi { source, enforce_roles: require_role })
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        tls::auth::RoleCheck::new(tls::auth::CLIENT_ROLES, require_role),
    )
}
