//! This kernel as the policy compiler sees it: tracepoint formats from
//! tracefs (opened by the first policy with a tracepoint), kernel
//! functions' parameters from BTF (parsed for each policy with kprobes).

use btf_rs::{Btf, Type};
use policy::compile::{Function, KernelView, Param, ParamKind};
use policy::schema::NamespaceName;
use policy::tracefs::Format;

use crate::tracefs::Tracefs;

/// Follow-typedef steps taken at most (BTF chains are short; a cycle in a
/// damaged BTF must not hang the sensor).
const MAX_DEPTH: u32 = 16;

pub struct KernelInfo {
    pub tracefs: Option<Tracefs>,
    pub btf: Option<Btf>,
}

impl KernelView for KernelInfo {
    fn tracepoint_format(&self, subsystem: &str, event: &str) -> Result<Option<Format>, String> {
        match &self.tracefs {
            Some(t) => t.tracepoint_format(subsystem, event),
            None => Err("tracefs is not open".into()),
        }
    }

    fn function(&self, name: &str) -> Result<Option<Function>, String> {
        let btf = self.btf.as_ref().ok_or("kernel BTF is not open")?;
        let Ok(types) = btf.resolve_types_by_name(name) else {
            return Ok(None);
        };
        let Some(Type::Func(func)) = types.into_iter().find(|t| matches!(t, Type::Func(_))) else {
            return Ok(None);
        };
        let Ok(Type::FuncProto(proto)) = btf.resolve_chained_type(&func) else {
            return Err("its BTF entry has no prototype".into());
        };
        let params = proto
            .parameters
            .iter()
            .filter(|p| !p.is_variadic())
            .map(|p| {
                let name = btf.resolve_name(p).unwrap_or_default();
                let (c_type, kind) = match btf.resolve_chained_type(p) {
                    Ok(t) => describe(btf, t, 0),
                    Err(_) => ("?".to_owned(), ParamKind::Other),
                };
                Param { name, c_type, kind }
            })
            .collect();
        Ok(Some(Function { params }))
    }

    /// The host's namespace as events' `is_host` has it
    /// (`HostNamespaces`: init's, else the kernel's initial one, else for
    /// mnt and net the sensor's own).
    fn host_namespace(&self, kind: NamespaceName) -> Result<u32, String> {
        let (host, _) = crate::privileges::HostNamespaces::read(std::path::Path::new("/proc"));
        match host.inum[policy::select::namespace_index(kind)] {
            0 => Err("neither init's namespace nor the sensor's can be read".into()),
            inum => Ok(inum),
        }
    }
}

/// A type's C spelling and kind.
fn describe(btf: &Btf, ty: Type, depth: u32) -> (String, ParamKind) {
    if depth > MAX_DEPTH {
        return ("?".into(), ParamKind::Other);
    }
    let name = |t: &dyn btf_rs::BtfType| btf.resolve_name(t).unwrap_or_default();
    let inner = |t: &dyn btf_rs::BtfType| match btf.resolve_chained_type(t) {
        Ok(next) => describe(btf, next, depth + 1),
        Err(_) => ("void".into(), ParamKind::Other),
    };
    match ty {
        Type::Void => ("void".into(), ParamKind::Other),
        Type::Int(i) => (name(&i), ParamKind::Int { size: i.size() as u32 }),
        Type::Enum(e) => (format!("enum {}", name(&e)), ParamKind::Int { size: e.size() as u32 }),
        Type::Enum64(e) => (format!("enum {}", name(&e)), ParamKind::Int { size: e.size() as u32 }),
        Type::Typedef(t) => (name(&t), inner(&t).1),
        Type::Const(c) => {
            let (s, k) = inner(&c);
            (format!("const {s}"), k)
        }
        Type::Volatile(v) => {
            let (s, k) = inner(&v);
            (format!("volatile {s}"), k)
        }
        Type::Restrict(r) => inner(&r),
        Type::TypeTag(t) => inner(&t),
        Type::Struct(s) => (format!("struct {}", name(&s)), ParamKind::Other),
        Type::Union(u) => (format!("union {}", name(&u)), ParamKind::Other),
        Type::Fwd(f) => (format!("struct {}", name(&f)), ParamKind::Other),
        Type::Ptr(p) => {
            let (s, _) = inner(&p);
            let to = match btf.resolve_chained_type(&p) {
                Ok(t) => pointee(btf, t, depth + 1),
                Err(_) => "void".into(),
            };
            (format!("{s} *"), ParamKind::Pointer { to })
        }
        _ => ("?".into(), ParamKind::Other),
    }
}

/// What a pointer points to, qualifiers and typedefs stripped: a struct's
/// or union's name (`file`), or an integer type's (`char`).
fn pointee(btf: &Btf, ty: Type, depth: u32) -> String {
    if depth > MAX_DEPTH {
        return "?".into();
    }
    let next = |t: &dyn btf_rs::BtfType| match btf.resolve_chained_type(t) {
        Ok(n) => pointee(btf, n, depth + 1),
        Err(_) => "void".into(),
    };
    match ty {
        Type::Struct(s) => btf.resolve_name(&s).unwrap_or_default(),
        Type::Union(u) => btf.resolve_name(&u).unwrap_or_default(),
        Type::Fwd(f) => btf.resolve_name(&f).unwrap_or_default(),
        Type::Int(i) => btf.resolve_name(&i).unwrap_or_default(),
        Type::Const(c) => next(&c),
        Type::Volatile(v) => next(&v),
        Type::Restrict(r) => next(&r),
        Type::TypeTag(t) => next(&t),
        Type::Typedef(t) => next(&t),
        Type::Void => "void".into(),
        _ => "?".into(),
    }
}
