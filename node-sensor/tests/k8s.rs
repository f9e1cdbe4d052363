//! Kubernetes identity (root, real BPF): the sensor watches a Kubernetes API
//! test double that speaks the list/watch protocol; processes are placed in
//! kubelet-shaped cgroups. Events must carry the right pod.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod common;
mod k8s_api;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Collector, Sensor, exec_of, exit_of, nonce, pid};
use events::compact::{CompactOptions, render};
use k8s_api::{ApiServer, PodCgroup, PodSpec};
use proto::tetragon::GetEventsRequest;
use serde_json::json;

const NODE: &str = "kt-node";

fn xwing(api: &ApiServer, cg: &PodCgroup) {
    api.add(PodSpec {
        namespace: "default",
        name: "xwing",
        uid: &cg.uid,
        node: NODE,
        container_id: &cg.container_id,
        labels: json!({"app.kubernetes.io/name": "xwing", "class": "xwing", "org": "alliance"}),
        owner: None,
    });
}

macro_rules! setup {
    ($systemd:expr) => {{
        require_kernel!();
        let Some(cg) = PodCgroup::new($systemd) else {
            assert!(std::env::var_os("VIGIL_REQUIRE_ALL").is_none(), "no cgroup2 hierarchy");
            eprintln!("SKIP: no cgroup2 hierarchy");
            return;
        };
        let api = ApiServer::start().await;
        let kubeconfig = std::env::temp_dir().join(format!("vigil-kubeconfig-{}", nonce()));
        api.kubeconfig(&kubeconfig);
        (cg, api, kubeconfig)
    }};
}

async fn sensor(kubeconfig: &std::path::Path) -> Sensor {
    Sensor::start(&["--enable-k8s-api", "--kubeconfig", &kubeconfig.display().to_string()]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_xwing_scenario_prints_as_the_seed_shows() {
    let (cg, api, kubeconfig) = setup!(false);
    xwing(&api, &cg);
    let s = sensor(&kubeconfig).await;
    let mut c = Collector::subscribe(&s, GetEventsRequest::default()).await;
    let mark = format!("vigil-k8s-{}", nonce());
    let mut child = cg.spawn(&format!("/usr/bin/whoami > /dev/null; /bin/echo {mark} > /dev/null"));
    child.wait().unwrap();
    let found = c
        .until(Duration::from_secs(15), |evs| evs.iter().filter_map(exit_of).any(|(p, _, _)| p.arguments == mark))
        .await;
    assert!(found, "no exit for the marked echo; log:\n{}", s.log());
    let whoami = c
        .events
        .iter()
        .find(|e| exec_of(e).is_some_and(|p| p.binary == "/usr/bin/whoami" && p.pod.is_some()))
        .expect("whoami exec with pod");
    let p = exec_of(whoami).unwrap();
    let pod = p.pod.as_ref().unwrap();
    assert_eq!((pod.namespace.as_str(), pod.name.as_str(), pod.uid.as_str()), ("default", "xwing", cg.uid.as_str()));
    assert_eq!(pod.workload, "xwing");
    assert_eq!(pod.workload_kind, "Pod");
    assert_eq!(pod.pod_labels.get("org").map(String::as_str), Some("alliance"));
    let container = pod.container.as_ref().unwrap();
    assert_eq!(container.id, format!("containerd://{}", cg.container_id));
    assert_eq!(container.name, "spaceship");
    assert_eq!(container.image.as_ref().unwrap().name, "docker.io/tgraf/netperf:latest");
    assert_eq!(p.docker, &cg.container_id[..31]);
    // Known from the kernel even though whoami is long gone by now (no pid
    // namespace was made, so it equals the host pid).
    assert_eq!(container.pid.map(|v| v.value), Some(pid(p)), "pid inside the container");
    assert_eq!(render(whoami, CompactOptions::default()).unwrap(), "🚀 process default/xwing /usr/bin/whoami ");
    let exit =
        c.events.iter().find(|e| exit_of(e).is_some_and(|(x, _, _)| x.exec_id == p.exec_id)).expect("whoami exit");
    assert_eq!(render(exit, CompactOptions::default()).unwrap(), "💥 exit    default/xwing /usr/bin/whoami  0");
    // The namespace and pod filters select it through the sensor.
    let filtered = GetEventsRequest {
        allow_list: vec![proto::tetragon::Filter {
            namespace: vec!["default".into()],
            pod_regex: vec!["^xwing$".into()],
            labels: vec!["org=alliance,class in (xwing)".into()],
            container_name_regex: vec!["^space".into()],
            namespace_regex: vec!["^def".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut f = Collector::subscribe(&s, filtered).await;
    let mark2 = format!("{mark}-2");
    cg.spawn(&format!("/bin/echo {mark2} > /dev/null")).wait().unwrap();
    assert!(f.until(Duration::from_secs(15), |evs| evs.iter().filter_map(exec_of).any(|p| p.arguments == mark2)).await);
    assert!(
        f.events
            .iter()
            .all(|e| events::subject::process(e).and_then(|p| p.pod.as_ref()).is_some_and(|p| p.name == "xwing"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_added_after_its_first_process_started() {
    // The systemd cgroup driver's layout (cri-containerd-<id>.scope).
    let (cg, api, kubeconfig) = setup!(true);
    let s = sensor(&kubeconfig).await;
    let mut c = Collector::subscribe(&s, GetEventsRequest::default()).await;
    let mark = format!("vigil-late-{}", nonce());
    cg.spawn(&format!("/bin/echo {mark} > /dev/null")).wait().unwrap();
    // Its events are held for the pod (the hold's timing itself is unit-
    // tested with paused time in pod_stage); then the watch learns of it.
    s.wait_counter("pod_waiting", |n| n >= 1).await;
    xwing(&api, &cg);
    assert!(
        c.until(Duration::from_secs(15), |evs| evs.iter().filter_map(exec_of).any(|p| p.arguments == mark)).await,
        "{}",
        s.log()
    );
    let p = c.events.iter().filter_map(exec_of).find(|p| p.arguments == mark).unwrap();
    assert_eq!(p.pod.as_ref().map(|p| p.name.as_str()), Some("xwing"), "held until the pod was known");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_pod_keeps_identity_for_running_processes() {
    let (cg, api, kubeconfig) = setup!(true);
    xwing(&api, &cg);
    let s = sensor(&kubeconfig).await;
    let mut c = Collector::subscribe(&s, GetEventsRequest::default()).await;
    let arg = format!("71.{}", nonce());
    let mut child = cg.spawn(&format!("exec /bin/sleep {arg}"));
    assert!(c.until(Duration::from_secs(15), |evs| evs.iter().filter_map(exec_of).any(|p| p.arguments == arg)).await);
    // A live process: its pid inside the container's pid namespace (the
    // same as the host's here, no pid namespace was made) is on the event.
    let exec = c.events.iter().filter_map(exec_of).find(|p| p.arguments == arg).unwrap();
    let container_pid = exec.pod.as_ref().and_then(|p| p.container.as_ref()).and_then(|c| c.pid).map(|v| v.value);
    assert_eq!(container_pid, Some(pid(exec)), "exec event: {exec:?}; sensor log:\n{}", s.log());
    api.delete(&cg.uid);
    // The watch has seen the deletion once the sensor knows no pods.
    s.wait_counter("k8s_pods", |n| n == 0).await;
    child.kill().unwrap();
    let _ = child.wait();
    assert!(
        c.until(Duration::from_secs(15), |evs| evs.iter().filter_map(exit_of).any(|(p, _, _)| p.arguments == arg))
            .await
    );
    let (p, _, signal) = c.events.iter().filter_map(exit_of).find(|(p, _, _)| p.arguments == arg).unwrap();
    assert_eq!(signal, "SIGKILL");
    assert_eq!(p.pod.as_ref().map(|p| p.name.as_str()), Some("xwing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_down_then_back_and_410_relists() {
    let (cg, api, kubeconfig) = setup!(false);
    api.set_down(true);
    let s = sensor(&kubeconfig).await;
    let mut c = Collector::subscribe(&s, GetEventsRequest::default()).await;
    // Events keep flowing without the API (host processes are not held).
    let host = format!("vigil-host-{}", nonce());
    Command::new("/bin/echo").arg(&host).stdout(Stdio::null()).status().unwrap();
    assert!(c.until(Duration::from_secs(15), |evs| evs.iter().filter_map(exec_of).any(|p| p.arguments == host)).await);
    // Back up, with the pod: the watcher recovers by itself.
    xwing(&api, &cg);
    api.set_down(false);
    let mark = format!("vigil-back-{}", nonce());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        cg.spawn(&format!("/bin/echo {mark} > /dev/null")).wait().unwrap();
        let ok = c
            .until(Duration::from_secs(8), |evs| {
                evs.iter().filter_map(exec_of).any(|p| p.arguments == mark && p.pod.is_some())
            })
            .await;
        if ok {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never recovered; requests: {:?}", api.requests());
    }
    // A watch that expires (410) is answered by a fresh list, which finds
    // a pod added meanwhile.
    let lists_before = api.lists();
    api.expire_watches();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while api.lists() == lists_before {
        assert!(std::time::Instant::now() < deadline, "no re-list after 410; requests: {:?}", api.requests());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
