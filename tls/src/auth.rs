//! Role checks: each listener serves certificate roles of its own, and a
//! few calls need more than the listener admits. The TLS layer has already
//! verified the chain (CA, validity); this checks the role the certificate
//! claims and says which rule a refused peer broke.

use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::Role;

/// An interceptor admitting only peers whose certificate has one of
/// `roles`. With `enforce` off (`--insecure`) everyone is admitted.
#[derive(Debug, Clone, Copy)]
pub struct RoleCheck {
    roles: &'static [Role],
    enforce: bool,
}

/// Who may use a client listener: readers and admins.
pub const CLIENT_ROLES: &[Role] = &[Role::Client, Role::Admin];

/// Who may use an ingest listener: sensors only.
pub const SENSOR_ROLES: &[Role] = &[Role::Sensor];

impl RoleCheck {
    pub fn new(roles: &'static [Role], enforce: bool) -> Self {
        RoleCheck { roles, enforce }
    }
}

fn names(roles: &[Role]) -> String {
    roles.iter().map(|r| r.name()).collect::<Vec<_>>().join(" or ")
}

/// The peer's role, checked against `roles`; `what` names what needs it.
fn check<T>(req: &Request<T>, roles: &[Role], what: &str) -> Result<(), Status> {
    let certs = req.peer_certs().ok_or_else(|| Status::unauthenticated("no client certificate was presented"))?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated("no client certificate was presented"))?;
    match crate::role_of(leaf.as_ref()) {
        Some(r) if roles.contains(&r) => Ok(()),
        Some(r) => Err(Status::permission_denied(format!(
            "certificate role {} may not use {what}; it needs the {} role",
            r.name(),
            names(roles)
        ))),
        None => Err(Status::permission_denied(format!(
            "certificate carries no vigil role; {what} needs the {} role",
            names(roles)
        ))),
    }
}

impl Interceptor for RoleCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        if self.enforce {
            check(&req, self.roles, "this listener")?;
        }
        Ok(req)
    }
}

/// For calls that change what the daemon does (adding or deleting tracing
/// policies): only an admin certificate, when roles are enforced.
pub fn require_admin<T>(req: &Request<T>, enforce: bool, what: &str) -> Result<(), Status> {
    if enforce { check(req, &[Role::Admin], what) } else { Ok(()) }
}
