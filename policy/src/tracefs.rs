//! A tracepoint's `format` file (tracefs `events/SUBSYS/EVENT/format`),
//! parsed: the fields a tracepoint policy's `args[].index` counts, common
//! fields included (for `syscalls/sys_enter_*`: 0–3 common, 4
//! `__syscall_nr`, 5.. the syscall's arguments), with their offset, size
//! and signedness, and the type `type: auto` gives each (section 3 of
//! POLICY-REFERENCE.md). The sensor reads the file; this only parses text.

use crate::schema::ArgType;

/// One `field:` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The C type as written (`const char *`, `unsigned long`, `umode_t`).
    pub c_type: String,
    pub name: String,
    /// Elements, for an array field (`args[6]`).
    pub array: Option<u32>,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

/// The fields of one tracepoint, in the file's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub name: String,
    pub id: u32,
    pub fields: Vec<Field>,
}

/// Why a format file did not parse, or a field has no `auto` type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("no `name:` or `ID:` line")]
    Header,
    /// Tetragon's wording, for a typedef it cannot size (`umode_t`).
    #[error("unknown type:{0}")]
    UnknownType(String),
}

impl Format {
    pub fn parse(text: &str) -> Result<Format, FormatError> {
        let (mut name, mut id, mut fields) = (None, None, Vec::new());
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let trimmed = line.trim();
            if let Some(n) = trimmed.strip_prefix("name:") {
                name = Some(n.trim().to_owned());
            } else if let Some(n) = trimmed.strip_prefix("ID:") {
                id = Some(n.trim().parse().map_err(|_| bad(line_no, "ID is not a number"))?);
            } else if trimmed.starts_with("field:") {
                fields.push(parse_field(trimmed).map_err(|reason| bad(line_no, reason))?);
            }
        }
        match (name, id) {
            (Some(name), Some(id)) => Ok(Format { name, id, fields }),
            _ => Err(FormatError::Header),
        }
    }
}

fn bad(line: usize, reason: impl Into<String>) -> FormatError {
    FormatError::Line { line, reason: reason.into() }
}

/// `field:TYPE NAME;\toffset:N;\tsize:N;\tsigned:N;`
fn parse_field(line: &str) -> Result<Field, String> {
    let mut parts = line.split(';').map(str::trim).filter(|p| !p.is_empty());
    let decl = parts.next().and_then(|p| p.strip_prefix("field:")).ok_or("no field declaration")?;
    let (mut offset, mut size, mut signed) = (None, None, None);
    for p in parts {
        let (key, value) = p.split_once(':').ok_or("a part without ':'")?;
        let number = || value.trim().parse::<u32>().map_err(|_| format!("{key} is not a number"));
        match key.trim() {
            "offset" => offset = Some(number()?),
            "size" => size = Some(number()?),
            "signed" => signed = Some(number()? != 0),
            _ => {}
        }
    }
    // The name is the last word; an array's is `name[N]`.
    let split = decl.rfind([' ', '*']).ok_or("no field name")?;
    let (c_type, name) = (decl[..=split].trim(), decl[split + 1..].trim());
    let (name, array) = match name.split_once('[') {
        Some((n, rest)) => {
            let count = rest.trim_end_matches(']');
            (n, Some(count.parse().map_err(|_| "array length is not a number")?))
        }
        None => (name, None),
    };
    if name.is_empty() {
        return Err("no field name".into());
    }
    Ok(Field {
        c_type: c_type.to_owned(),
        name: name.to_owned(),
        array,
        offset: offset.ok_or("no offset")?,
        size: size.ok_or("no size")?,
        signed: signed.ok_or("no signed")?,
    })
}

/// Integer types a format names, whose size and sign the format gives.
const INTEGERS: &[&str] = &[
    "char",
    "short",
    "int",
    "long",
    "long long",
    "signed char",
    "unsigned char",
    "unsigned short",
    "unsigned int",
    "unsigned",
    "unsigned long",
    "unsigned long long",
    "bool",
    "_Bool",
    "u8",
    "u16",
    "u32",
    "u64",
    "s8",
    "s16",
    "s32",
    "s64",
    "__u8",
    "__u16",
    "__u32",
    "__u64",
    "__s8",
    "__s16",
    "__s32",
    "__s64",
    "pid_t",
    "uid_t",
    "gid_t",
    "ssize_t",
    "loff_t",
    "gfp_t",
];

impl Field {
    /// A pointer (`const char *`): what it points to is read.
    pub fn is_pointer(&self) -> bool {
        self.c_type.trim_end().ends_with('*')
    }

    /// A plain integer of the record (no pointer, array or `__data_loc`).
    pub fn is_scalar(&self) -> bool {
        !self.is_pointer() && !self.c_type.starts_with("__data_loc") && self.array.is_none()
    }

    /// The type `type: auto` reads this field as.
    pub fn auto_type(&self) -> Result<ArgType, FormatError> {
        let base = self.c_type.trim_start_matches("const ").trim();
        if base.starts_with("__data_loc") {
            return Ok(ArgType::String);
        }
        if self.array.is_some() {
            return Ok(ArgType::ConstBuf);
        }
        if base.ends_with('*') {
            let pointee = base.trim_end_matches('*').trim();
            return if pointee == "char" { Ok(ArgType::CharBuf) } else { Ok(ArgType::Uint64) };
        }
        if base == "size_t" {
            return Ok(ArgType::SizeT);
        }
        if !INTEGERS.contains(&base) {
            return Err(FormatError::UnknownType(base.to_owned()));
        }
        Ok(match (self.size, self.signed) {
            (8, true) => ArgType::Int64,
            (8, false) => ArgType::Uint64,
            (4, true) => ArgType::Int32,
            (4, false) => ArgType::Uint32,
            (2, true) => ArgType::Int16,
            (2, false) => ArgType::Uint16,
            (1, true) => ArgType::Int8,
            (_, _) => ArgType::Uint8,
        })
    }
}
