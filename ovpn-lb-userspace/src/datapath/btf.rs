//! Struct layouts from the running kernel's BTF (`/sys/kernel/btf/vmlinux`,
//! and a module's split BTF on top of it): the ring accounting reads kernel
//! memory at offsets that change from build to build. aya parses BTF too but
//! keeps struct members private, hence this reader: only what finding a
//! member's offset needs, every read bounds-checked.

use std::collections::HashMap;

use anyhow::{Result, anyhow, bail};

/// BTF kinds (`include/uapi/linux/btf.h`).
mod kind {
    pub const INT: u32 = 1;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

const MAGIC: u16 = 0xeb9f;

struct Member {
    name: String,
    /// Bit offset in the enclosing struct or union.
    bits: u32,
    ty: u32,
}

struct Type {
    kind: u32,
    /// Size (structs, unions) or referenced type (typedefs, qualifiers).
    size_or_ref: u32,
    members: Vec<Member>,
}

/// The types of one kernel image, with its modules' added on demand.
pub struct Btf {
    types: Vec<Type>,
    structs: HashMap<String, u32>,
    /// The base's string section: a split BTF's string offsets below its
    /// length name the base's strings, those above its own.
    base_strings: Vec<u8>,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| anyhow!("BTF truncated at byte {at}"))
}

fn usize_at(b: &[u8], at: usize) -> Result<usize> {
    Ok(usize::try_from(u32_at(b, at)?)?)
}

impl Btf {
    /// Parses a complete (base) BTF blob.
    ///
    /// # Errors
    /// If it is not little-endian BTF or is malformed.
    pub fn parse(blob: &[u8]) -> Result<Self> {
        let mut btf = Self {
            // Type id 0 is `void`.
            types: vec![Type {
                kind: 0,
                size_or_ref: 0,
                members: Vec::new(),
            }],
            structs: HashMap::new(),
            base_strings: Vec::new(),
        };
        btf.base_strings = btf.add(blob, &[])?;
        Ok(btf)
    }

    /// Adds a module's split BTF, whose ids and strings continue the base's.
    ///
    /// # Errors
    /// As [`Btf::parse`].
    pub fn add_split(&mut self, blob: &[u8]) -> Result<()> {
        let base = std::mem::take(&mut self.base_strings);
        let added = self.add(blob, &base).map(drop);
        self.base_strings = base;
        added
    }

    /// Appends the types of `b`, whose string offsets continue `base`'s;
    /// returns its string section.
    fn add(&mut self, b: &[u8], base: &[u8]) -> Result<Vec<u8>> {
        let magic = b.get(..2).map(|m| u16::from_le_bytes([m[0], m[1]]));
        if magic != Some(MAGIC) {
            bail!("not little-endian BTF");
        }
        let header = usize_at(b, 4)?;
        let (type_off, type_len) = (usize_at(b, 8)?, usize_at(b, 12)?);
        let (str_off, str_len) = (usize_at(b, 16)?, u32_at(b, 20)?);
        let strings = b
            .get(header + str_off..header + str_off + str_len as usize)
            .ok_or_else(|| anyhow!("BTF string section out of bounds"))?;
        let name = |off: u32| -> Result<String> {
            let off = off as usize;
            let s = if off < base.len() {
                &base[off..]
            } else {
                strings
                    .get(off - base.len()..)
                    .ok_or_else(|| anyhow!("BTF string offset {off} out of bounds"))?
            };
            let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
            Ok(String::from_utf8_lossy(&s[..end]).into_owned())
        };
        let start = header + type_off;
        let end = start + type_len;
        let mut at = start;
        while at < end {
            let name_off = u32_at(b, at)?;
            let info = u32_at(b, at + 4)?;
            let size_or_ref = u32_at(b, at + 8)?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let bitfields = info >> 31 == 1;
            let mut members = Vec::new();
            match kind {
                kind::STRUCT | kind::UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let offset = u32_at(b, m + 8)?;
                        members.push(Member {
                            name: name(u32_at(b, m)?)?,
                            bits: if bitfields {
                                offset & 0x00ff_ffff
                            } else {
                                offset
                            },
                            ty: u32_at(b, m + 4)?,
                        });
                    }
                    at += vlen * 12;
                }
                kind::INT | kind::VAR | kind::DECL_TAG => at += 4,
                kind::ARRAY => at += 12,
                kind::ENUM | kind::FUNC_PROTO => at += vlen * 8,
                kind::DATASEC | kind::ENUM64 => at += vlen * 12,
                _ => {}
            }
            let id = u32::try_from(self.types.len())?;
            if kind == kind::STRUCT {
                let n = name(name_off)?;
                if !n.is_empty() {
                    self.structs.entry(n).or_insert(id);
                }
            }
            self.types.push(Type {
                kind,
                size_or_ref,
                members,
            });
        }
        Ok(strings.to_vec())
    }

    fn struct_id(&self, name: &str) -> Result<u32> {
        self.structs
            .get(name)
            .copied()
            .ok_or_else(|| anyhow!("the kernel's BTF has no struct {name}"))
    }

    /// Size of struct `name` in bytes.
    ///
    /// # Errors
    /// If there is no such struct.
    pub fn size(&self, name: &str) -> Result<u32> {
        Ok(self.types[self.struct_id(name)? as usize].size_or_ref)
    }

    /// Byte offset of `member` in struct `name`, looking through anonymous
    /// structs and unions.
    ///
    /// # Errors
    /// If there is no such struct or member.
    pub fn offset(&self, name: &str, member: &str) -> Result<u32> {
        self.find(self.struct_id(name)?, member, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| anyhow!("the kernel's struct {name} has no member {member}"))
    }

    fn find(&self, id: u32, member: &str, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for m in &self.types.get(id as usize)?.members {
            if m.name == member {
                return Some(m.bits);
            }
            if m.name.is_empty()
                && let Some(inner) = self.find(self.resolve(m.ty), member, depth + 1)
            {
                return Some(m.bits + inner);
            }
        }
        None
    }

    /// Skips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..16 {
            match self.types.get(id as usize) {
                Some(t)
                    if matches!(
                        t.kind,
                        kind::TYPEDEF
                            | kind::VOLATILE
                            | kind::CONST
                            | kind::RESTRICT
                            | kind::TYPE_TAG
                    ) =>
                {
                    id = t.size_or_ref;
                }
                _ => break,
            }
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob: `types` as (name, info, size/type, extra words), strings
    /// as given (offset 0 is the empty string).
    fn blob(types: &[(u32, u32, u32, &[u32])], strings: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        for (name, info, size, extra) in types {
            for w in [*name, *info, *size].iter().chain(extra.iter()) {
                t.extend_from_slice(&w.to_le_bytes());
            }
        }
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        let len = |n: usize| u32::try_from(n).unwrap();
        for w in [24, 0, len(t.len()), len(t.len()), len(strings.len())] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(strings);
        b
    }

    const fn info(kind: u32, vlen: u32) -> u32 {
        (kind << 24) | vlen
    }

    // Strings: 1 "u32", 5 "outer", 11 "a", 13 "b", 15 "inner".
    const STRINGS: &[u8] = b"\0u32\0outer\0a\0b\0inner\0";

    #[test]
    fn members_through_anonymous_unions_and_typedefs() {
        let b = blob(
            &[
                // 1: int u32
                (1, info(kind::INT, 0), 4, &[32]),
                // 2: anonymous union { u32 b; }
                (0, info(kind::UNION, 1), 4, &[13, 1, 0]),
                // 3: typedef of 2
                (0, info(kind::TYPEDEF, 0), 2, &[]),
                // 4: struct outer { u32 a; <anon, via typedef> at 64 bits }, 12 bytes
                (5, info(kind::STRUCT, 2), 12, &[11, 1, 0, 0, 3, 64]),
            ],
            STRINGS,
        );
        let btf = Btf::parse(&b).unwrap();
        assert_eq!(btf.size("outer").unwrap(), 12);
        assert_eq!(btf.offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.offset("outer", "b").unwrap(), 8);
        assert!(btf.offset("outer", "c").is_err());
        assert!(btf.size("inner").is_err());
    }

    #[test]
    fn bitfield_offsets_drop_the_size() {
        // kind_flag set: offset is (bitfield size << 24) | bit offset.
        let b = blob(
            &[
                (1, info(kind::INT, 0), 4, &[32]),
                (
                    5,
                    info(kind::STRUCT, 1) | 1 << 31,
                    8,
                    &[11, 1, (3 << 24) | 0x28],
                ),
            ],
            STRINGS,
        );
        assert_eq!(Btf::parse(&b).unwrap().offset("outer", "a").unwrap(), 5);
    }

    #[test]
    fn split_btf_continues_the_base() {
        let base = blob(&[(1, info(kind::INT, 0), 4, &[32])], STRINGS);
        let mut btf = Btf::parse(&base).unwrap();
        // The module's struct inner { u32 a; u32 tail; } uses the base's
        // type 1 and strings ("a" is the base's), and its own ("inner",
        // "tail"), whose offsets start after the base's.
        let base_len = u32::try_from(STRINGS.len()).unwrap();
        let module = blob(
            &[(
                base_len + 1,
                info(kind::STRUCT, 2),
                8,
                &[11, 1, 0, base_len + 7, 1, 32],
            )],
            b"\0inner\0tail\0",
        );
        btf.add_split(&module).unwrap();
        assert_eq!(btf.offset("inner", "a").unwrap(), 0);
        assert_eq!(btf.offset("inner", "tail").unwrap(), 4);
        assert_eq!(btf.size("inner").unwrap(), 8);
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        assert!(Btf::parse(b"not btf at all").is_err());
        let mut b = blob(&[(1, info(kind::INT, 0), 4, &[32])], STRINGS);
        b.truncate(30);
        assert!(Btf::parse(&b).is_err());
    }

    #[test]
    fn the_running_kernel_has_what_the_accounting_reads() {
        let Ok(blob) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI: the kernel must have BTF (/sys/kernel/btf/vmlinux)"
            );
            eprintln!("skipped: no /sys/kernel/btf/vmlinux");
            return;
        };
        let btf = Btf::parse(&blob).unwrap();
        assert!(btf.size("net_device").unwrap() > 1000);
        assert!(btf.offset("sk_buff", "len").unwrap() > 0);
        assert!(btf.offset("ptr_ring", "consumer_head").unwrap() > 0);
    }
}
