//! A Kubernetes API test double speaking the real list/watch protocol over
//! HTTP for pods, nodes and the `cilium.io/v1alpha1` tracing policies:
//! JSON lists with a resourceVersion, field selectors (`spec.nodeName=`,
//! `metadata.name=`), watch streams of ADDED/MODIFIED/DELETED/BOOKMARK
//! lines, `410 Gone` (an ERROR event with a Status) when asked, and 503
//! while "down". Written from the API's documented behaviour; only what
//! the sensor's watchers use is served. Self-contained (the relay's tests
//! include it too).
#![allow(dead_code, reason = "each test binary uses part of this module")]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::{Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// The collections served: path, and the kind of their lists' items.
const COLLECTIONS: &[(&str, &str)] = &[
    (PODS, "Pod"),
    (NODES, "Node"),
    (TRACING_POLICIES, "TracingPolicy"),
    (TRACING_POLICIES_NAMESPACED, "TracingPolicyNamespaced"),
];
pub const PODS: &str = "/api/v1/pods";
pub const NODES: &str = "/api/v1/nodes";
pub const TRACING_POLICIES: &str = "/apis/cilium.io/v1alpha1/tracingpolicies";
pub const TRACING_POLICIES_NAMESPACED: &str = "/apis/cilium.io/v1alpha1/tracingpoliciesnamespaced";

#[derive(Default)]
struct State {
    /// Every object, with the collection it is in.
    objects: Vec<(&'static str, Value)>,
    rv: u64,
    down: bool,
    gone_next_watch: bool,
    /// Bumped to end every open watch stream.
    generation: u64,
    requests: Vec<String>,
}

#[derive(Clone)]
pub struct ApiServer {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<(u64, String, &'static str, Value)>,
    pub port: u16,
}

fn pod_json(
    namespace: &str,
    name: &str,
    uid: &str,
    node: &str,
    container_id: &str,
    labels: Value,
    owner: Option<Value>,
) -> Value {
    let mut meta = json!({"name": name, "namespace": namespace, "uid": uid, "labels": labels});
    if let Some(o) = owner {
        meta["ownerReferences"] = json!([o]);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {"nodeName": node, "containers": [{"name": "spaceship", "image": "docker.io/tgraf/netperf:latest"}]},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "spaceship", "containerID": format!("containerd://{container_id}"),
            "image": "docker.io/tgraf/netperf:latest",
            "imageID": "docker.io/tgraf/netperf@sha256:8e86f744bfea165fd4ce68caa05abc96500f40130b857773186401926af7e9e6",
            "ready": true, "restartCount": 0, "state": {"running": {"startedAt": "2022-05-11T10:07:33Z"}}}]}
    })
}

pub struct PodSpec<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub node: &'a str,
    pub container_id: &'a str,
    pub labels: Value,
    pub owner: Option<Value>,
}

impl ApiServer {
    pub async fn start() -> ApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (events, _) = broadcast::channel(1024);
        let server = ApiServer { state: Arc::default(), events, port };
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let s = s.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(s.handle(req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        server
    }

    /// A kubeconfig pointing at this server, written to `path`.
    pub fn kubeconfig(&self, path: &std::path::Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: http://127.0.0.1:{}\nusers:\n- name: t\n  user: {{}}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: t\ncurrent-context: t\n",
            self.port
        );
        std::fs::write(path, text).unwrap();
    }

    fn change(&self, kind: &str, collection: &'static str, object: Value) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        let mut object = object;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let id = identity(&object);
        st.objects.retain(|(c, o)| *c != collection || identity(o) != id);
        if kind != "DELETED" {
            st.objects.push((collection, object.clone()));
        }
        drop(st);
        let _ = self.events.send((rv, kind.to_owned(), collection, object));
    }

    pub fn add(&self, p: PodSpec<'_>) {
        self.change("ADDED", PODS, pod_json(p.namespace, p.name, p.uid, p.node, p.container_id, p.labels, p.owner));
    }

    pub fn delete(&self, uid: &str) {
        let pod = self.find(PODS, |p| p["metadata"]["uid"] == uid);
        if let Some(pod) = pod {
            self.change("DELETED", PODS, pod);
        }
    }

    fn find(&self, collection: &str, matches: impl Fn(&Value) -> bool) -> Option<Value> {
        let st = self.state.lock().unwrap();
        st.objects.iter().find(|(c, o)| *c == collection && matches(o)).map(|(_, o)| o.clone())
    }

    /// Creates or replaces an object of `collection` (a policy, a node),
    /// as `kubectl apply` does.
    pub fn apply(&self, collection: &'static str, object: Value) {
        let id = identity(&object);
        let kind = if self.find(collection, |o| identity(o) == id).is_some() { "MODIFIED" } else { "ADDED" };
        self.change(kind, collection, object);
    }

    /// Deletes an object of `collection` by namespace and name.
    pub fn remove(&self, collection: &'static str, namespace: &str, name: &str) {
        let id = (namespace.to_owned(), name.to_owned());
        if let Some(o) = self.find(collection, |o| identity(o) == id) {
            self.change("DELETED", collection, o);
        }
    }

    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// Ends the open watch streams; the next watch request gets an ERROR
    /// event with a 410 Status, as when a resourceVersion is too old.
    pub fn expire_watches(&self) {
        let mut st = self.state.lock().unwrap();
        st.gone_next_watch = true;
        st.generation += 1;
        drop(st);
        let _ = self.events.send((0, "WAKE".into(), PODS, Value::Null));
    }

    /// List requests served so far (as opposed to watches).
    pub fn lists(&self) -> usize {
        self.requests().iter().filter(|r| !r.contains("watch=true") && !r.contains("watch=1")).count()
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
        let uri = req.uri().clone();
        let query: Vec<(String, String)> = uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), urldecode(v)))
            .collect();
        let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.clone());
        let mut st = self.state.lock().unwrap();
        st.requests.push(uri.to_string());
        if st.down {
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 503, "reason": "ServiceUnavailable", "message": "test double is down"}),
            );
        }
        let Some(&(collection, item_kind)) = COLLECTIONS.iter().find(|(path, _)| *path == uri.path()) else {
            return status(
                StatusCode::NOT_FOUND,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": format!("no route {}", uri.path())}),
            );
        };
        let selector = get("fieldSelector").and_then(|f| f.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())));
        let on_node = move |c: &str, o: &Value| {
            c == collection
                && selector.as_ref().is_none_or(|(field, want)| {
                    field.split('.').fold(o, |v, part| &v[part]).as_str() == Some(want.as_str())
                })
        };
        if get("watch").as_deref() != Some("true") && get("watch").as_deref() != Some("1") {
            let items: Vec<Value> = st.objects.iter().filter(|(c, o)| on_node(c, o)).map(|(_, o)| o.clone()).collect();
            let body = json!({"apiVersion": "v1", "kind": format!("{item_kind}List"), "metadata": {"resourceVersion": st.rv.to_string()}, "items": items});
            return status(StatusCode::OK, body);
        }
        let from: u64 = get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
        if std::mem::take(&mut st.gone_next_watch) {
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": format!("too old resource version: {from}"), "reason": "Expired", "code": 410}});
            let _ = tx.try_send(Ok(Frame::data(Bytes::from(format!("{gone}\n")))));
            drop(tx);
        } else {
            // Changes after `from` that the list already covered are not
            // replayed; everything later streams as it happens.
            let mut changes = self.events.subscribe();
            let bookmark = json!({"type": "BOOKMARK", "object": {"kind": item_kind, "apiVersion": "v1", "metadata": {"resourceVersion": st.rv.to_string()}}});
            let _ = tx.try_send(Ok(Frame::data(Bytes::from(format!("{bookmark}\n")))));
            let state = self.state.clone();
            let generation = st.generation;
            tokio::spawn(async move {
                while let Ok((rv, kind, c, pod)) = changes.recv().await {
                    let ended = {
                        let st = state.lock().unwrap();
                        st.down || st.generation != generation
                    };
                    if ended {
                        return;
                    }
                    if kind == "WAKE" {
                        continue;
                    }
                    if rv <= from || !on_node(c, &pod) {
                        continue;
                    }
                    let line = json!({"type": kind, "object": pod});
                    if tx.send(Ok(Frame::data(Bytes::from(format!("{line}\n"))))).await.is_err() {
                        return;
                    }
                }
            });
        }
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(BodyExt::boxed(body))
            .unwrap()
    }
}

/// A `cilium.io/v1alpha1` policy object of `kind` with `spec`.
pub fn policy_object(kind: &str, name: &str, namespace: Option<&str>, spec: Value) -> Value {
    let mut meta = json!({"name": name});
    if let Some(ns) = namespace {
        meta["namespace"] = json!(ns);
    }
    json!({"apiVersion": "cilium.io/v1alpha1", "kind": kind, "metadata": meta, "spec": spec})
}

/// An object's (namespace, name).
fn identity(o: &Value) -> (String, String) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (text(&o["metadata"]["namespace"]), text(&o["metadata"]["name"]))
}

/// A kubelet-shaped cgroup for a container; removed on drop.
pub struct PodCgroup {
    dirs: Vec<String>,
    pub procs: String,
    pub container_id: String,
    pub uid: String,
}

impl PodCgroup {
    pub fn new(systemd: bool) -> Option<PodCgroup> {
        let root = test_support::cgroup2_root()?;
        let n = test_support::nonce();
        let container_id: String = format!("{:0>64}", format!("{n}c0ffee")).chars().rev().collect();
        let uid = format!("4f5e3a2b-1c2d-4e5f-8a9b-{:0>12}", &n[n.len().saturating_sub(12)..]);
        let (pod_dir, leaf) = if systemd {
            let slice = format!(
                "{root}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
                uid.replace('-', "_")
            );
            (slice.clone(), format!("{slice}/cri-containerd-{container_id}.scope"))
        } else {
            let d = format!("{root}/kubepods/besteffort/pod{uid}");
            (d.clone(), format!("{d}/{container_id}"))
        };
        std::fs::create_dir_all(&leaf).ok()?;
        Some(PodCgroup { dirs: vec![leaf.clone(), pod_dir], procs: format!("{leaf}/cgroup.procs"), container_id, uid })
    }

    /// Runs `sh -c` moved into this cgroup first.
    pub fn spawn(&self, script: &str) -> std::process::Child {
        std::process::Command::new("/bin/sh")
            .args(["-c", &format!("echo $$ > {} && {script}", self.procs)])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn status(code: StatusCode, body: Value) -> Response<BoxBody<Bytes, Infallible>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(Full::new(Bytes::from(body.to_string()))))
        .unwrap()
}

fn urldecode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    out.push(v);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
