//! The TracingPolicy document as Tetragon's CRD defines it (see
//! POLICY-REFERENCE.md, sections 2–7): field names, defaults, and the enum
//! spellings the CRD accepts (case-sensitive: the lower-case aliases Tetragon's
//! Go parser also knows fail a file load, so they fail here). Unknown fields
//! are errors. Fields Tetragon knows that Vigil does not implement yet are
//! parsed, so that [`crate::validate`] can refuse them by name.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Anything kept only to be refused or passed on (label selectors, macros).
pub type Opaque = serde_yaml::Value;

/// An [`Opaque`] field in the CRD's schema: any value, kept as given (the
/// API server must not prune what Vigil reads itself).
#[cfg(feature = "schema")]
fn opaque_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TracingPolicy {
    pub api_version: String,
    pub kind: Kind,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Kind {
    TracingPolicy,
    TracingPolicyNamespaced,
}

/// Kubernetes object metadata: what a policy file carries. Other
/// `ObjectMeta` fields (as `kubectl get -o yaml` writes them) are accepted
/// and ignored, as the API server's are.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub kprobes: Vec<KProbe>,
    #[serde(default)]
    pub tracepoints: Vec<Tracepoint>,
    #[serde(default)]
    pub uprobes: Vec<UProbe>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(schema_with = "opaque_schema"))]
    pub fentries: Option<Opaque>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(schema_with = "opaque_schema"))]
    pub lsmhooks: Option<Opaque>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(schema_with = "opaque_schema"))]
    pub usdts: Option<Opaque>,
    #[serde(default)]
    pub loader: Option<bool>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(schema_with = "opaque_schema"))]
    pub lists: Option<Opaque>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(schema_with = "opaque_schema"))]
    pub enforcers: Option<Opaque>,
    #[serde(default)]
    pub options: Vec<PolicyOption>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(schema_with = "opaque_schema"))]
    pub selectors_macros: Option<Opaque>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(schema_with = "opaque_schema"))]
    pub pod_selector: Option<Opaque>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(schema_with = "opaque_schema"))]
    pub container_selector: Option<Opaque>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(schema_with = "opaque_schema"))]
    pub host_selector: Option<Opaque>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(schema_with = "opaque_schema"))]
    pub node_selector: Option<Opaque>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyOption {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

fn yes() -> bool {
    true
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KProbe {
    pub call: String,
    /// Tetragon's default: a kernel function needs an explicit `false`.
    #[serde(default = "yes")]
    pub syscall: bool,
    #[serde(default, rename = "return")]
    pub is_return: bool,
    #[serde(default)]
    pub return_arg: Option<Arg>,
    #[serde(default)]
    pub return_arg_action: Option<String>,
    #[serde(default)]
    pub args: Vec<Arg>,
    #[serde(default)]
    pub data: Vec<Arg>,
    #[serde(default)]
    pub selectors: Vec<Selector>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub ignore: Option<KProbeIgnore>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KProbeIgnore {
    #[serde(default)]
    pub call_not_found: bool,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tracepoint {
    pub subsystem: String,
    pub event: String,
    #[serde(default)]
    pub raw: bool,
    #[serde(default)]
    pub args: Vec<Arg>,
    #[serde(default)]
    pub selectors: Vec<Selector>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UProbe {
    pub path: String,
    #[serde(default)]
    pub symbols: Vec<String>,
    #[serde(default)]
    pub offsets: Vec<u64>,
    #[serde(default)]
    pub addrs: Vec<u64>,
    #[serde(default)]
    pub ref_ctr_offsets: Vec<u64>,
    #[serde(default)]
    pub btf_path: Option<String>,
    #[serde(default)]
    pub args: Vec<Arg>,
    #[serde(default)]
    pub data: Vec<Arg>,
    #[serde(default, rename = "return")]
    pub is_return: bool,
    #[serde(default)]
    pub return_arg: Option<Arg>,
    #[serde(default)]
    pub selectors: Vec<Selector>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub binary_digests: Vec<String>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(schema_with = "opaque_schema"))]
    pub ignore: Option<Opaque>,
}

/// One argument to read (`args`, `data`, `returnArg`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Arg {
    pub index: u32,
    #[serde(default, rename = "type")]
    pub arg_type: ArgType,
    /// 1-based number of the argument holding the size (0: unset).
    #[serde(default)]
    pub size_arg_index: u32,
    #[serde(default)]
    pub return_copy: bool,
    #[serde(default)]
    pub max_data: bool,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub resolve: Option<String>,
    #[serde(default)]
    pub btf_type: Option<String>,
    #[serde(default)]
    pub btf_type_module: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
}

/// Argument types, spelled as the CRD enum spells them.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArgType {
    #[default]
    Auto,
    Int,
    Sint32,
    Int32,
    Sint16,
    Int16,
    Sint8,
    Int8,
    Uint32,
    Uint16,
    Uint8,
    Long,
    Sint64,
    Int64,
    Uint64,
    Ulong,
    SizeT,
    BpfCmd,
    String,
    Filename,
    NetDevice,
    CharBuf,
    CharIovec,
    IovIter,
    File,
    Fd,
    Kiocb,
    Path,
    Dentry,
    LinuxBinprm,
    Skb,
    Sock,
    Socket,
    Sockaddr,
    SockaddrUn,
    Cred,
    BpfAttr,
    BpfProg,
    PerfEvent,
    BpfMap,
    UserNamespace,
    Capability,
    LoadInfo,
    Module,
    KernelCapT,
    CapInheritable,
    CapPermitted,
    CapEffective,
    Syscall64,
    ConstBuf,
    Nop,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    #[serde(default)]
    pub match_args: Vec<ArgFilter>,
    #[serde(default)]
    pub match_data: Vec<ArgFilter>,
    #[serde(default)]
    pub match_return_args: Vec<ArgFilter>,
    #[serde(default, rename = "matchPIDs")]
    pub match_pids: Vec<PidFilter>,
    #[serde(default)]
    pub match_binaries: Vec<BinaryFilter>,
    #[serde(default)]
    pub match_parent_binaries: Vec<BinaryFilter>,
    #[serde(default)]
    pub match_namespaces: Vec<NamespaceFilter>,
    #[serde(default)]
    pub match_namespace_changes: Vec<ChangeFilter>,
    #[serde(default)]
    pub match_capabilities: Vec<CapabilityFilter>,
    #[serde(default)]
    pub match_capability_changes: Vec<CapabilityFilter>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(schema_with = "opaque_schema"))]
    pub match_workloads: Option<Opaque>,
    #[serde(default)]
    pub match_actions: Vec<Action>,
    #[serde(default)]
    pub match_return_actions: Vec<Action>,
    #[serde(default)]
    pub macros: Vec<String>,
    #[serde(default)]
    pub label: Option<String>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ArgFilter {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub args: Vec<u32>,
    pub operator: ArgOperator,
    #[serde(default)]
    pub values: Vec<String>,
}

/// `matchArgs` operators, in the CRD's spelling (`NotSportPriv` included).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ArgOperator {
    Equal,
    NotEqual,
    Prefix,
    NotPrefix,
    Postfix,
    NotPostfix,
    GreaterThan,
    GT,
    LessThan,
    LT,
    Mask,
    InRange,
    NotInRange,
    InMap,
    NotInMap,
    SAddr,
    DAddr,
    NotSAddr,
    NotDAddr,
    SPort,
    DPort,
    NotSPort,
    NotDPort,
    SPortPriv,
    DPortPriv,
    NotSportPriv,
    NotDPortPriv,
    Protocol,
    Family,
    State,
    FileType,
    NotFileType,
    CapabilitiesGained,
    SubString,
    SubStringIgnCase,
    CelExpr,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum InOperator {
    In,
    NotIn,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PidFilter {
    pub operator: InOperator,
    #[serde(default)]
    pub values: Vec<u32>,
    #[serde(default, rename = "isNamespacePID")]
    pub is_namespace_pid: bool,
    #[serde(default)]
    pub follow_forks: bool,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum BinaryOperator {
    In,
    NotIn,
    Prefix,
    NotPrefix,
    Postfix,
    NotPostfix,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BinaryFilter {
    pub operator: BinaryOperator,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub follow_children: bool,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum NamespaceName {
    Uts,
    Ipc,
    Mnt,
    Pid,
    PidForChildren,
    Net,
    Time,
    TimeForChildren,
    Cgroup,
    User,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceFilter {
    pub namespace: NamespaceName,
    pub operator: InOperator,
    #[serde(default)]
    pub values: Vec<String>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChangeFilter {
    pub operator: InOperator,
    #[serde(default)]
    pub values: Vec<String>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum CapabilitySet {
    #[default]
    Effective,
    Inheritable,
    Permitted,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CapabilityFilter {
    #[serde(default, rename = "type")]
    pub set: CapabilitySet,
    pub operator: InOperator,
    #[serde(default)]
    pub is_namespace_capability: bool,
    #[serde(default)]
    pub values: Vec<String>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ActionKind {
    Post,
    NoPost,
    Sigkill,
    Signal,
    Override,
    GetUrl,
    DnsLookup,
    TrackSock,
    UntrackSock,
    NotifyEnforcer,
    CleanupEnforcerNotification,
    Set,
    FollowFD,
    UnfollowFD,
    CopyFD,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Action {
    pub action: ActionKind,
    #[serde(default)]
    pub arg_error: Option<i32>,
    #[serde(default)]
    pub arg_sig: Option<u32>,
    #[serde(default)]
    pub arg_fd: Option<u32>,
    #[serde(default)]
    pub arg_name: Option<u32>,
    #[serde(default)]
    pub arg_url: Option<String>,
    #[serde(default)]
    pub arg_fqdn: Option<String>,
    #[serde(default)]
    pub arg_sock: Option<u32>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(schema_with = "opaque_schema"))]
    pub arg_regs: Option<Opaque>,
    #[serde(default)]
    pub arg_new_symbol: Option<String>,
    #[serde(default)]
    pub arg_new_addr: Option<u64>,
    #[serde(default)]
    pub arg_new_offset: Option<u64>,
    #[serde(default)]
    pub arg_index: Option<u32>,
    #[serde(default)]
    pub arg_value: Option<u32>,
    #[serde(default)]
    pub rate_limit: Option<String>,
    #[serde(default)]
    pub rate_limit_scope: Option<String>,
    #[serde(default)]
    pub kernel_stack_trace: bool,
    #[serde(default)]
    pub user_stack_trace: bool,
    #[serde(default)]
    pub ima_hash: bool,
}
