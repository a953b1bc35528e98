//! A bounds-checking walker for the Thrift compact protocol, run over parquet
//! footers and page headers before the parquet crate decodes them.
//!
//! The parquet crate sizes vectors from the element counts a file declares and
//! recurses as deep as the schema says, so a small file can make it allocate
//! gigabytes or overflow the stack. The walker visits every value without
//! allocating and refuses: a list, set, map or binary longer than the bytes
//! left (each element takes at least one byte), nesting deeper than
//! [`MAX_DEPTH`], an unknown type, or a truncated value. On the way it hands
//! integers and byte strings to a visitor along with their field-id path.

/// Deepest struct/list nesting accepted.
pub(crate) const MAX_DEPTH: usize = 24;

/// Receives the values met while walking. Paths are the field ids from the
/// outermost struct; list elements do not add to the path.
pub(crate) trait Visit {
    fn int(&mut self, _path: &[i16], _value: i64) {}
    fn bytes(&mut self, _path: &[i16], _value: &[u8]) {}
    /// A struct at `path` begins (also once per element of a list of structs).
    fn begin(&mut self, _path: &[i16]) {}
}

/// A visitor that only validates.
#[cfg(test)]
pub(crate) struct Ignore;
#[cfg(test)]
impl Visit for Ignore {}

/// Walks one struct at the start of `b`; returns the bytes it took.
pub(crate) fn walk_struct(b: &[u8], visit: &mut impl Visit) -> Result<usize, String> {
    let mut w = Walker { b, pos: 0 };
    let mut path = Vec::with_capacity(8);
    w.structure(&mut path, visit)?;
    Ok(w.pos)
}

struct Walker<'a> {
    b: &'a [u8],
    pos: usize,
}

const STOP: u8 = 0;
const TRUE: u8 = 1;
const FALSE: u8 = 2;
const BYTE: u8 = 3;
const I16: u8 = 4;
const I32: u8 = 5;
const I64: u8 = 6;
const DOUBLE: u8 = 7;
const BINARY: u8 = 8;
const LIST: u8 = 9;
const SET: u8 = 10;
const MAP: u8 = 11;
const STRUCT: u8 = 12;
const UUID: u8 = 13;

impl Walker<'_> {
    fn left(&self) -> usize {
        self.b.len() - self.pos
    }

    fn byte(&mut self) -> Result<u8, String> {
        let v = *self.b.get(self.pos).ok_or("truncated thrift value")?;
        self.pos += 1;
        Ok(v)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = self.byte()?;
            if shift == 63 && byte > 1 {
                return Err("thrift varint overflows 64 bits".to_string());
            }
            v |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("thrift varint is too long".to_string())
    }

    fn zigzag(&mut self) -> Result<i64, String> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn skip(&mut self, n: usize) -> Result<(), String> {
        if n > self.left() {
            return Err("thrift value runs past the end".to_string());
        }
        self.pos += n;
        Ok(())
    }

    fn structure(&mut self, path: &mut Vec<i16>, visit: &mut impl Visit) -> Result<(), String> {
        if path.len() >= MAX_DEPTH {
            return Err(format!("thrift structures nest deeper than {MAX_DEPTH}"));
        }
        visit.begin(path);
        let mut last_id: i16 = 0;
        loop {
            let header = self.byte()?;
            let kind = header & 0x0F;
            if kind == STOP {
                return Ok(());
            }
            let delta = header >> 4;
            let id = if delta == 0 {
                let z = self.zigzag()?;
                i16::try_from(z).map_err(|_| "thrift field id out of range".to_string())?
            } else {
                last_id.checked_add(i16::from(delta)).ok_or("thrift field id out of range")?
            };
            last_id = id;
            path.push(id);
            let result = match kind {
                TRUE => {
                    visit.int(path, 1);
                    Ok(())
                }
                FALSE => {
                    visit.int(path, 0);
                    Ok(())
                }
                _ => self.value(kind, path, visit),
            };
            path.pop();
            result?;
        }
    }

    fn value(&mut self, kind: u8, path: &mut Vec<i16>, visit: &mut impl Visit) -> Result<(), String> {
        match kind {
            TRUE | FALSE => {
                // Only inside lists, sets and maps: one byte each.
                let v = self.byte()?;
                visit.int(path, i64::from(v == TRUE));
            }
            BYTE => {
                let v = self.byte()?;
                visit.int(path, i64::from(v as i8));
            }
            I16 | I32 | I64 => {
                let v = self.zigzag()?;
                visit.int(path, v);
            }
            DOUBLE => self.skip(8)?,
            UUID => self.skip(16)?,
            BINARY => {
                let n = self.varint()?;
                if n > self.left() as u64 {
                    return Err("thrift binary is longer than the bytes left".to_string());
                }
                let start = self.pos;
                self.pos += n as usize;
                visit.bytes(path, &self.b[start..self.pos]);
            }
            LIST | SET => {
                let header = self.byte()?;
                let element = header & 0x0F;
                let mut n = u64::from(header >> 4);
                if n == 15 {
                    n = self.varint()?;
                }
                if n > self.left() as u64 {
                    return Err("thrift list is longer than the bytes left".to_string());
                }
                if path.len() >= MAX_DEPTH {
                    return Err(format!("thrift structures nest deeper than {MAX_DEPTH}"));
                }
                for _ in 0..n {
                    self.element(element, path, visit)?;
                }
            }
            MAP => {
                let n = self.varint()?;
                if n > 0 {
                    if n.saturating_mul(2) > self.left() as u64 {
                        return Err("thrift map is longer than the bytes left".to_string());
                    }
                    let kinds = self.byte()?;
                    for _ in 0..n {
                        self.element(kinds >> 4, path, visit)?;
                        self.element(kinds & 0x0F, path, visit)?;
                    }
                }
            }
            STRUCT => self.structure(path, visit)?,
            other => return Err(format!("unknown thrift type {other}")),
        }
        Ok(())
    }

    fn element(&mut self, kind: u8, path: &mut Vec<i16>, visit: &mut impl Visit) -> Result<(), String> {
        if kind == STOP {
            return Err("thrift collection of no type".to_string());
        }
        self.value(kind, path, visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Collect(Vec<(Vec<i16>, i64)>);
    impl Visit for Collect {
        fn int(&mut self, path: &[i16], value: i64) {
            self.0.push((path.to_vec(), value));
        }
    }

    #[test]
    fn walks_and_bounds() {
        // struct { 1: i32 = -3, 2: list<i32> [1, 2], 3: struct { 1: true } }
        let b = [0x15, 0x05, 0x19, 0x25, 0x02, 0x04, 0x1C, 0x11, 0x00, 0x00];
        let mut c = Collect(Vec::new());
        assert_eq!(walk_struct(&b, &mut c).unwrap(), b.len());
        assert_eq!(c.0, vec![(vec![1], -3), (vec![2], 1), (vec![2], 2), (vec![3, 1], 1)]);
        // A list that claims 2^40 elements in a 10-byte buffer.
        let bomb = [0x19, 0xF5, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20, 0x00, 0x00];
        assert!(walk_struct(&bomb, &mut Ignore).unwrap_err().contains("longer"));
        // Nesting too deep.
        let mut deep = vec![0x1C; 100];
        deep.extend(vec![0x00; 101]);
        assert!(walk_struct(&deep, &mut Ignore).unwrap_err().contains("deeper"));
        assert!(walk_struct(&[0x15], &mut Ignore).is_err());
    }
}
