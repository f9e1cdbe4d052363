//! Role checks: each listener serves one certificate role. The TLS layer
//! has already verified the chain (CA, validity); this checks the role the
//! certificate claims and says which rule a refused peer broke.

use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::Role;

/// An interceptor admitting only peers whose certificate has `role`. With
/// `enforce` off (`--insecure`) everyone is admitted.
#[derive(Debug, Clone, Copy)]
pub struct RoleCheck {
    role: Role,
    enforce: bool,
}

impl RoleCheck {
    pub fn new(role: Role, enforce: bool) -> Self {
        RoleCheck { role, enforce }
    }
}

impl Interceptor for RoleCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        if !self.enforce {
            return Ok(req);
        }
        let role = self.role;
        let certs = req.peer_certs().ok_or_else(|| Status::unauthenticated("no client certificate was presented"))?;
        let leaf = certs.first().ok_or_else(|| Status::unauthenticated("no client certificate was presented"))?;
        match crate::role_of(leaf.as_ref()) {
            Some(r) if r == role => Ok(req),
            Some(r) => Err(Status::permission_denied(format!(
                "certificate role {} may not use this listener; it needs the {} role",
                r.name(),
                role.name()
            ))),
            None => Err(Status::permission_denied(format!(
                "certificate carries no vigil role; this listener needs the {} role",
                role.name()
            ))),
        }
    }
}
