//! `vigil tracingpolicy add|delete|enable|disable|set-mode|list`: Tetragon's
//! policy RPCs, as `tetra tracingpolicy` calls them. A file is checked
//! here before it is sent, so a bad one is named by path without a round
//! trip; the server checks again (it also knows the kernel).

use anyhow::Context;
use proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient;
use proto::tetragon::{
    AddTracingPolicyRequest, ConfigureTracingPolicyRequest, DeleteTracingPolicyRequest, DisableTracingPolicyRequest,
    EnableTracingPolicyRequest, ListTracingPoliciesRequest, ListTracingPoliciesResponse, TracingPolicyMode,
    TracingPolicyState,
};

use crate::args::{ListFormat, PolicyMode, TracingPolicyCommand};
use crate::getevents::status_error;
use crate::target::Target;

impl TracingPolicyCommand {
    /// It changes policies: it needs an admin certificate.
    pub fn changes(&self) -> bool {
        !matches!(self, TracingPolicyCommand::List { .. } | TracingPolicyCommand::Validate { .. })
    }
}

pub async fn run(target: &Target, command: &TracingPolicyCommand) -> anyhow::Result<()> {
    let client = || async { anyhow::Ok(FineGuidanceSensorsClient::new(target.channel().await?)) };
    match command {
        TracingPolicyCommand::Validate { .. } => anyhow::bail!("validate runs locally"),
        TracingPolicyCommand::Add { file } => {
            let yaml = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            let policy = policy::parse(&yaml).with_context(|| format!("{}", file.display()))?;
            client()
                .await?
                .add_tracing_policy(AddTracingPolicyRequest { yaml, domain: String::new() })
                .await
                .map_err(status_error)?;
            println!("tracing policy {:?} added", policy.metadata.name);
        }
        TracingPolicyCommand::Delete(p) => {
            let request = DeleteTracingPolicyRequest {
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                ..Default::default()
            };
            client().await?.delete_tracing_policy(request).await.map_err(status_error)?;
            println!("tracing policy {:?} deleted", p.name);
        }
        TracingPolicyCommand::Enable(p) => {
            let request = EnableTracingPolicyRequest {
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                ..Default::default()
            };
            client().await?.enable_tracing_policy(request).await.map_err(status_error)?;
            println!("tracing policy {:?} enabled", p.name);
        }
        TracingPolicyCommand::Disable(p) => {
            let request = DisableTracingPolicyRequest {
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                ..Default::default()
            };
            client().await?.disable_tracing_policy(request).await.map_err(status_error)?;
            println!("tracing policy {:?} disabled", p.name);
        }
        TracingPolicyCommand::SetMode { policy: p, mode } => {
            let wire = match mode {
                PolicyMode::Enforce => TracingPolicyMode::TpModeEnforce,
                PolicyMode::Monitor => TracingPolicyMode::TpModeMonitor,
            };
            let request = ConfigureTracingPolicyRequest {
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                mode: Some(wire as i32),
                ..Default::default()
            };
            client().await?.configure_tracing_policy(request).await.map_err(status_error)?;
            println!("tracing policy {:?} set to {}", p.name, wire.as_str_name());
        }
        TracingPolicyCommand::List { output } => {
            let list = client()
                .await?
                .list_tracing_policies(ListTracingPoliciesRequest::default())
                .await
                .map_err(status_error)?
                .into_inner();
            match output {
                ListFormat::Json => println!("{}", serde_json::to_string(&list)?),
                ListFormat::Text => print!("{}", table(&list)),
            }
        }
    }
    Ok(())
}

/// `tetra tracingpolicy list`'s columns.
pub fn table(list: &ListTracingPoliciesResponse) -> String {
    let mut out = format!(
        "{:<4} {:<32} {:<10} {:<12} {:<26} {:>13} {:<8} {:>8}  ERROR\n",
        "ID", "NAME", "STATE", "NAMESPACE", "SENSORS", "KERNELMEMORY", "MODE", "NPOST"
    );
    for p in &list.policies {
        let state = match TracingPolicyState::try_from(p.state) {
            Ok(TracingPolicyState::TpStateEnabled) => "enabled",
            Ok(TracingPolicyState::TpStateDisabled) => "disabled",
            Ok(TracingPolicyState::TpStateLoadError) => "load_error",
            Ok(TracingPolicyState::TpStateError) => "error",
            _ => "unknown",
        };
        let mode = match TracingPolicyMode::try_from(p.mode) {
            Ok(TracingPolicyMode::TpModeEnforce) => "enforce",
            Ok(TracingPolicyMode::TpModeMonitor) => "monitor",
            Ok(TracingPolicyMode::TpModeMonitorOnly) => "monitor_only",
            _ => "unknown",
        };
        let posts = p.stats.as_ref().and_then(|s| s.action_counters.as_ref()).map_or(0, |c| c.post);
        let namespace = if p.namespace.is_empty() { "(global)" } else { &p.namespace };
        out.push_str(&format!(
            "{:<4} {:<32} {:<10} {:<12} {:<26} {:>13} {:<8} {:>8}  {}\n",
            p.id,
            p.name,
            state,
            namespace,
            p.sensors.join(","),
            format!("{} B", p.kernel_memory_bytes),
            mode,
            posts,
            p.error
        ));
        // A relay's policies: the state on each node.
        if !p.info.is_empty() {
            out.push_str(&format!("     {}\n", p.info));
        }
    }
    out
}
