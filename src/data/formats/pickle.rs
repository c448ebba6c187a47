//! A restricted unpickler: it rebuilds dicts, lists, tuples, strings, ints and numpy arrays,
//! and nothing else. Python's pickle runs arbitrary callables named by GLOBAL opcodes; here
//! only the few numpy constructors that array pickles name are recognised, and they are
//! interpreted, never called, so loading a file cannot execute anything.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::error::printable;

type Res<T> = std::result::Result<T, String>;
type List = Rc<Seq>;
type Dict = Rc<Map>;

/// The items of a list or tuple.
#[derive(Debug, Default)]
pub struct Seq(RefCell<Vec<Value>>);

/// The items of a dict, in insertion order.
#[derive(Debug, Default)]
pub struct Map(RefCell<Vec<(Value, Value)>>);

impl Seq {
    fn new(items: Vec<Value>) -> Rc<Self> {
        Rc::new(Seq(RefCell::new(items)))
    }

    pub fn borrow(&self) -> std::cell::Ref<'_, Vec<Value>> {
        self.0.borrow()
    }

    fn borrow_mut(&self) -> std::cell::RefMut<'_, Vec<Value>> {
        self.0.borrow_mut()
    }
}

impl Map {
    fn borrow(&self) -> std::cell::Ref<'_, Vec<(Value, Value)>> {
        self.0.borrow()
    }

    fn borrow_mut(&self) -> std::cell::RefMut<'_, Vec<(Value, Value)>> {
        self.0.borrow_mut()
    }
}

impl Drop for Seq {
    fn drop(&mut self) {
        drop_flat(std::mem::take(self.0.get_mut()));
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        let items = std::mem::take(self.0.get_mut());
        drop_flat(items.into_iter().flat_map(|(k, v)| [k, v]).collect());
    }
}

/// Drops values without recursing into nested containers: a hostile file can nest lists a
/// million deep in two bytes per level, and the default recursive drop would overflow the
/// stack. Containers still shared elsewhere are left alone.
fn drop_flat(mut work: Vec<Value>) {
    while let Some(v) = work.pop() {
        match v {
            Value::List(s) | Value::Tuple(s) => {
                if let Ok(mut seq) = Rc::try_unwrap(s) {
                    work.append(seq.0.get_mut());
                }
            }
            Value::Dict(m) => {
                if let Ok(mut map) = Rc::try_unwrap(m) {
                    for (k, v) in map.0.get_mut().drain(..) {
                        work.extend([k, v]);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Containers are shared (`Rc`), as in Python: a memoized list that is appended to later
/// must show the appended items wherever the memo hands it out again.
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Bytes(Rc<Vec<u8>>),
    Str(Rc<str>),
    Tuple(List),
    List(List),
    Dict(Dict),
    Global(Global),
    Dtype(Rc<RefCell<Dtype>>),
    Array(Rc<RefCell<Array>>),
}

/// The only names a GLOBAL may refer to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    /// `numpy.core.multiarray._reconstruct(ndarray, shape, dtype)`: an empty array that
    /// BUILD then fills.
    Reconstruct,
    NdArray,
    /// `numpy.dtype(descr, align, copy)`.
    Dtype,
    /// Python 3 pickles bytes at protocol 2 as `_codecs.encode(latin1_str, 'latin1')`.
    CodecsEncode,
}

/// A numpy dtype such as `u1` or `<i8`: kind letter, item size, byte order.
#[derive(Clone, Debug)]
pub struct Dtype {
    pub kind: char,
    pub size: usize,
    pub big_endian: bool,
}

/// A C-ordered numpy array with its raw bytes.
#[derive(Clone, Debug, Default)]
pub struct Array {
    pub shape: Vec<usize>,
    pub dtype: Option<Dtype>,
    pub data: Rc<Vec<u8>>,
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Bytes(_) => "bytes",
            Value::Str(_) => "str",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Dtype(_) => "dtype",
            Value::Array(_) => "array",
        }
    }

    /// The string or bytes as text, for keys and names.
    fn text(&self) -> Option<String> {
        match self {
            Value::Str(s) => Some(s.to_string()),
            Value::Bytes(b) => String::from_utf8(b.to_vec()).ok(),
            _ => None,
        }
    }

    /// `self[key]` for a dict, matching `key` against str and bytes keys alike (the CIFAR
    /// files were written by Python 2, whose keys are bytes).
    pub fn get(&self, key: &str) -> Option<Value> {
        let Value::Dict(items) = self else {
            return None;
        };
        let items = items.borrow();
        // The last assignment wins, as in Python.
        items
            .iter()
            .rev()
            .find(|(k, _)| k.text().as_deref() == Some(key))
            .map(|(_, v)| v.clone())
    }
}

/// The elements of a list or tuple, or the values of a 1-D integer array.
pub fn int_list(v: &Value) -> Res<Vec<i64>> {
    match v {
        Value::List(items) | Value::Tuple(items) => ints(&items.borrow()),
        Value::Array(a) => a.borrow().to_i64(),
        other => Err(format!(
            "expected a list of ints, found a {}",
            other.type_name()
        )),
    }
}

fn ints(items: &[Value]) -> Res<Vec<i64>> {
    items
        .iter()
        .map(|v| match v {
            Value::Int(i) => Ok(*i),
            other => Err(format!("expected an int, found a {}", other.type_name())),
        })
        .collect()
}

pub fn text_list(v: &Value) -> Res<Vec<String>> {
    let items = match v {
        Value::List(items) | Value::Tuple(items) => items.borrow().clone(),
        other => return Err(format!("expected a list, found a {}", other.type_name())),
    };
    items
        .iter()
        .map(|v| {
            v.text()
                .ok_or_else(|| format!("expected a string, found a {}", v.type_name()))
        })
        .collect()
}

impl Array {
    /// Checks this is a uint8 array of `row_bytes`-byte rows and returns the row count.
    pub fn u8_rows(&self, row_bytes: usize) -> Res<usize> {
        let dtype = self.dtype.as_ref().ok_or("the array was never filled in")?;
        if !(dtype.kind == 'u' && dtype.size == 1) {
            return Err(format!(
                "dtype is {}{}, expected uint8",
                dtype.kind, dtype.size
            ));
        }
        // Checked: with a zero first dimension the rest of the shape can be anything.
        let per_row = (self.shape.iter().skip(1)).try_fold(1usize, |a, &d| a.checked_mul(d));
        if self.shape.is_empty() || per_row != Some(row_bytes) {
            return Err(format!(
                "shape is {:?}, expected (N, {row_bytes})",
                self.shape
            ));
        }
        Ok(self.shape[0])
    }

    /// The elements of a 1-D integer array.
    pub fn to_i64(&self) -> Res<Vec<i64>> {
        let dtype = self.dtype.as_ref().ok_or("the array was never filled in")?;
        if self.shape.len() != 1 || !matches!(dtype.kind, 'u' | 'i' | 'b') {
            return Err(format!(
                "expected a 1-D integer array, found shape {:?} dtype {}{}",
                self.shape, dtype.kind, dtype.size
            ));
        }
        self.data
            .chunks_exact(dtype.size)
            .map(|c| {
                let mut le = [0u8; 8];
                le[..c.len()].copy_from_slice(c);
                if dtype.big_endian {
                    le[..c.len()].reverse();
                }
                // Sign-extend signed values narrower than 8 bytes.
                if dtype.kind == 'i' && c.len() < 8 && le[c.len() - 1] & 0x80 != 0 {
                    le[c.len()..].fill(0xff);
                }
                let v = i64::from_le_bytes(le);
                if dtype.kind == 'u' && c.len() == 8 && v < 0 {
                    Err("an array value does not fit in 64 bits".to_string())
                } else {
                    Ok(v)
                }
            })
            .collect()
    }
}

/// Reads one pickle and returns the object it describes.
pub fn load(bytes: &[u8]) -> Res<Value> {
    let mut m = Machine {
        input: bytes,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    loop {
        let at = m.pos;
        let op = m
            .take(1)
            .map_err(|_| "the pickle ends without a STOP opcode")?[0];
        match m.step(op) {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => return Err(format!("{e} (pickle opcode 0x{op:02x} at byte {at})")),
        }
    }
}

struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stack heights at each MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl<'a> Machine<'a> {
    /// Executes one opcode; `Some` at STOP.
    fn step(&mut self, op: u8) -> Res<Option<Value>> {
        match op {
            0x80 => {
                // PROTO: protocols 2..=5 share the opcodes used here.
                let p = self.take(1)?[0];
                if p > 5 {
                    return Err(format!("pickle protocol {p} is not supported"));
                }
            }
            0x95 => {
                // FRAME (protocol 4): only a length hint.
                self.take(8)?;
            }
            b'.' => return self.pop().map(Some),
            b'(' => self.marks.push(self.stack.len()),
            b'N' => self.stack.push(Value::None),
            0x88 => self.stack.push(Value::Bool(true)),
            0x89 => self.stack.push(Value::Bool(false)),
            b'}' => self.stack.push(Value::Dict(Default::default())),
            b']' => self.stack.push(Value::List(Default::default())),
            b')' => self.stack.push(Value::Tuple(Default::default())),
            b'J' => {
                let v = i32::from_le_bytes(self.array()?);
                self.stack.push(Value::Int(v as i64));
            }
            b'K' => {
                let v = self.take(1)?[0];
                self.stack.push(Value::Int(v as i64));
            }
            b'M' => {
                let v = u16::from_le_bytes(self.array()?);
                self.stack.push(Value::Int(v as i64));
            }
            b'I' => {
                let v = self.int_line()?;
                self.stack.push(v);
            }
            0x8a => {
                let v = self.long1()?;
                self.stack.push(Value::Int(v));
            }
            b'X' => {
                let n = self.len_u32()?;
                self.push_unicode(n)?;
            }
            0x8c => {
                let n = self.take(1)?[0] as usize;
                self.push_unicode(n)?;
            }
            b'U' | b'C' => {
                // SHORT_BINSTRING (a Python 2 str) / SHORT_BINBYTES: raw bytes.
                let n = self.take(1)?[0] as usize;
                self.push_bytes(n)?;
            }
            b'T' | b'B' => {
                // BINSTRING / BINBYTES.
                let n = self.len_u32()?;
                self.push_bytes(n)?;
            }
            b'q' => {
                let i = self.take(1)?[0] as u32;
                self.put(i)?;
            }
            b'r' => {
                let i = u32::from_le_bytes(self.array()?);
                self.put(i)?;
            }
            0x94 => {
                // MEMOIZE (protocol 4): PUT at the next free index.
                self.put(self.memo.len() as u32)?;
            }
            b'h' => {
                let i = self.take(1)?[0] as u32;
                self.get(i)?;
            }
            b'j' => {
                let i = u32::from_le_bytes(self.array()?);
                self.get(i)?;
            }
            b'a' => {
                let v = self.pop()?;
                self.list_top()?.borrow_mut().push(v);
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.list_top()?.borrow_mut().extend(items);
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.dict_top()?.borrow_mut().push((k, v));
            }
            b'u' => {
                let items = self.pop_mark()?;
                if items.len() % 2 != 0 {
                    return Err("SETITEMS with an odd number of items".into());
                }
                let dict = self.dict_top()?;
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    dict.borrow_mut().push((k, v));
                }
            }
            b't' => {
                let items = self.pop_mark()?;
                self.stack.push(Value::Tuple(Seq::new(items)));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let floor = self.marks.last().copied().unwrap_or(0);
                if self.stack.len() < floor + n {
                    return Err("stack underflow".into());
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.stack.push(Value::Tuple(Seq::new(items)));
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.stack.push(Value::Global(resolve(&module, &name)?));
            }
            0x93 => {
                // STACK_GLOBAL (protocol 4): module and name come from the stack.
                let name = self.pop()?;
                let module = self.pop()?;
                let (Value::Str(module), Value::Str(name)) = (module, name) else {
                    return Err("STACK_GLOBAL needs two strings".into());
                };
                self.stack.push(Value::Global(resolve(&module, &name)?));
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let v = reduce(callable, args)?;
                self.stack.push(v);
            }
            b'b' => {
                let state = self.pop()?;
                let target = self.stack.last().ok_or("stack underflow")?;
                build(target, state)?;
            }
            _ => return Err("unsupported pickle opcode".into()),
        }
        Ok(None)
    }

    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.input.len())
            .ok_or("the pickle is truncated")?;
        let s = &self.input[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Res<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn len_u32(&mut self) -> Res<usize> {
        Ok(u32::from_le_bytes(self.array()?) as usize)
    }

    /// A newline-terminated ASCII argument (GLOBAL, INT).
    fn line(&mut self) -> Res<String> {
        let rest = &self.input[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("the pickle is truncated")?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| "a name is not text")?;
        self.pos += n + 1;
        Ok(s.to_string())
    }

    /// INT: Python 2 writes booleans as `I00`/`I01`.
    fn int_line(&mut self) -> Res<Value> {
        let s = self.line()?;
        Ok(match s.as_str() {
            "00" => Value::Bool(false),
            "01" => Value::Bool(true),
            _ => Value::Int(s.trim().parse().map_err(|_| format!("bad INT {s:?}"))?),
        })
    }

    /// LONG1: little-endian two's complement of up to 8 bytes here.
    fn long1(&mut self) -> Res<i64> {
        let n = self.take(1)?[0] as usize;
        if n > 8 {
            return Err(format!("a {n}-byte integer is too large"));
        }
        let b = self.take(n)?;
        let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) {
            0xff
        } else {
            0
        };
        let mut le = [fill; 8];
        le[..n].copy_from_slice(b);
        Ok(i64::from_le_bytes(le))
    }

    fn push_unicode(&mut self, n: usize) -> Res<()> {
        let s = std::str::from_utf8(self.take(n)?).map_err(|_| "a string is not UTF-8")?;
        self.stack.push(Value::Str(s.into()));
        Ok(())
    }

    fn push_bytes(&mut self, n: usize) -> Res<()> {
        let b = self.take(n)?.to_vec();
        self.stack.push(Value::Bytes(Rc::new(b)));
        Ok(())
    }

    fn pop(&mut self) -> Res<Value> {
        match self.marks.last() {
            Some(&m) if m >= self.stack.len() => Err("stack underflow at a MARK".into()),
            _ => self.stack.pop().ok_or_else(|| "stack underflow".into()),
        }
    }

    fn pop_mark(&mut self) -> Res<Vec<Value>> {
        let m = self.marks.pop().ok_or("no MARK to pop to")?;
        if m > self.stack.len() {
            return Err("stack underflow".into());
        }
        Ok(self.stack.split_off(m))
    }

    fn put(&mut self, i: u32) -> Res<()> {
        let top = self.stack.last().ok_or("PUT on an empty stack")?;
        self.memo.insert(i, top.clone());
        Ok(())
    }

    fn get(&mut self, i: u32) -> Res<()> {
        let v = self
            .memo
            .get(&i)
            .ok_or(format!("memo entry {i} is not set"))?;
        self.stack.push(v.clone());
        Ok(())
    }

    fn list_top(&self) -> Res<List> {
        match self.stack.last() {
            Some(Value::List(l)) => Ok(l.clone()),
            _ => Err("APPEND to something that is not a list".into()),
        }
    }

    fn dict_top(&self) -> Res<Dict> {
        match self.stack.last() {
            Some(Value::Dict(d)) => Ok(d.clone()),
            _ => Err("SETITEM on something that is not a dict".into()),
        }
    }
}

/// The allow-list. numpy 2 renamed `numpy.core` to `numpy._core`.
fn resolve(module: &str, name: &str) -> Res<Global> {
    Ok(match (module, name) {
        ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct") => Global::Reconstruct,
        ("numpy", "ndarray") => Global::NdArray,
        ("numpy", "dtype") => Global::Dtype,
        ("_codecs", "encode") => Global::CodecsEncode,
        _ => {
            return Err(format!(
                "pickle references {}.{}, refusing to execute code",
                printable(module),
                printable(name)
            ));
        }
    })
}

/// The items of a tuple (shallow copies).
fn tuple(v: &Value, what: &str) -> Res<Vec<Value>> {
    match v {
        Value::Tuple(t) => Ok(t.borrow().clone()),
        other => Err(format!(
            "{what} is a {}, expected a tuple",
            other.type_name()
        )),
    }
}

/// REDUCE, interpreted for the allowed callables only.
fn reduce(callable: Value, args: Value) -> Res<Value> {
    let Value::Global(g) = callable else {
        return Err(format!(
            "REDUCE on a {}, not an allowed global",
            callable.type_name()
        ));
    };
    let args = tuple(&args, "REDUCE arguments")?;
    match g {
        Global::Reconstruct => match args.first() {
            Some(Value::Global(Global::NdArray)) => {
                Ok(Value::Array(Rc::new(RefCell::new(Array::default()))))
            }
            _ => Err("_reconstruct of something other than numpy.ndarray".into()),
        },
        Global::Dtype => {
            let descr = args
                .first()
                .and_then(Value::text)
                .ok_or("dtype without a name")?;
            Ok(Value::Dtype(Rc::new(RefCell::new(parse_dtype(&descr)?))))
        }
        Global::CodecsEncode => match (args.first(), args.get(1).and_then(Value::text)) {
            (Some(Value::Str(s)), Some(enc)) if matches!(enc.as_str(), "latin1" | "latin-1") => {
                let bytes: Option<Vec<u8>> =
                    s.chars().map(|c| u8::try_from(c as u32).ok()).collect();
                let bytes = bytes.ok_or("_codecs.encode of a non-latin1 string")?;
                Ok(Value::Bytes(Rc::new(bytes)))
            }
            _ => Err("_codecs.encode is only supported for latin1 strings".into()),
        },
        Global::NdArray => Err("numpy.ndarray is only supported inside _reconstruct".into()),
    }
}

/// `u1`, `i8`, `<i8`, `b1`...; the byte order normally comes later, from BUILD.
fn parse_dtype(descr: &str) -> Res<Dtype> {
    let (big_endian, rest) = match descr.as_bytes().first() {
        Some(b'>') => (true, &descr[1..]),
        Some(b'<' | b'|' | b'=') => (false, &descr[1..]),
        _ => (false, descr),
    };
    let mut chars = rest.chars();
    let kind = chars.next().ok_or("empty dtype")?;
    let size: usize = chars
        .as_str()
        .parse()
        .map_err(|_| format!("unsupported dtype {descr:?}"))?;
    if !matches!(kind, 'u' | 'i' | 'b' | 'f') || !matches!(size, 1 | 2 | 4 | 8) {
        return Err(format!("unsupported dtype {descr:?}"));
    }
    Ok(Dtype {
        kind,
        size,
        big_endian,
    })
}

/// BUILD: `__setstate__` of a dtype or an array, interpreted.
fn build(target: &Value, state: Value) -> Res<()> {
    let state = tuple(&state, "BUILD state")?;
    match target {
        Value::Dtype(d) => {
            // (version, byteorder, subarray, names, fields, elsize, alignment, flags...)
            let order = state
                .get(1)
                .and_then(Value::text)
                .ok_or("dtype state without a byte order")?;
            let mut d = d.borrow_mut();
            d.big_endian = match order.as_str() {
                ">" => true,
                "<" => false,
                "=" => cfg!(target_endian = "big"),
                _ => d.big_endian,
            };
            Ok(())
        }
        Value::Array(a) => {
            let array = array_from_state(&state)?;
            *a.borrow_mut() = array;
            Ok(())
        }
        other => Err(format!("BUILD on a {}", other.type_name())),
    }
}

/// `(version, shape, dtype, is_fortran, rawdata)`, or the 4-tuple of old numpy.
fn array_from_state(state: &[Value]) -> Res<Array> {
    let fields = match state.len() {
        5 => &state[1..],
        4 => state,
        n => return Err(format!("array state has {n} fields")),
    };
    let shape = tuple(&fields[0], "array shape")?
        .iter()
        .map(|v| match v {
            Value::Int(i) if *i >= 0 => Ok(*i as usize),
            _ => Err("bad array shape".to_string()),
        })
        .collect::<Res<Vec<usize>>>()?;
    let Value::Dtype(dtype) = &fields[1] else {
        return Err("array state without a dtype".into());
    };
    let dtype = dtype.borrow().clone();
    let fortran = matches!(fields[2], Value::Bool(true) | Value::Int(1));
    if fortran && shape.len() > 1 {
        return Err("Fortran-ordered arrays are not supported".into());
    }
    let Value::Bytes(data) = &fields[3] else {
        return Err(format!(
            "array data is a {}, expected bytes",
            fields[3].type_name()
        ));
    };
    let expected = shape
        .iter()
        .try_fold(dtype.size, |acc, &d| acc.checked_mul(d))
        .ok_or("array shape overflows")?;
    if data.len() != expected {
        return Err(format!(
            "array of shape {shape:?} needs {expected} bytes, found {}",
            data.len()
        ));
    }
    Ok(Array {
        shape,
        dtype: Some(dtype),
        data: data.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_opcodes_and_truncation_are_errors() {
        let e = load(b"\x80\x02}q\x01(U\x01aK\x01G").unwrap_err();
        assert!(e.contains("opcode 0x47 at byte 11"), "{e}");
        let e = load(b"\x80\x02T\xff\xff\x00\x00abc").unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let e = load(b"\x80\x02K\x01").unwrap_err();
        assert!(e.contains("without a STOP"), "{e}");
        let e = load(b"\x80\x02(\x85.").unwrap_err();
        assert!(e.contains("underflow"), "{e}");
    }

    #[test]
    fn deep_nesting_neither_overflows_the_stack_nor_fails() {
        let depth = 1_000_000;
        let mut lists = b"\x80\x02".to_vec();
        lists.extend(std::iter::repeat_n(b']', depth));
        lists.extend(std::iter::repeat_n(b'a', depth - 1));
        lists.push(b'.');
        let mut tuples = b"\x80\x02)".to_vec();
        tuples.extend(std::iter::repeat_n(0x85, depth));
        tuples.push(b'.');
        // A small stack, so a recursive drop would crash here rather than pass by luck.
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                assert!(matches!(load(&lists), Ok(Value::List(_))));
                assert!(matches!(load(&tuples), Ok(Value::Tuple(_))));
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn memo_hands_out_the_same_list_after_it_grew() {
        // {'a': [1, 2], 'b': <memo 2>}: 'b' is stored before it is filled.
        let v = load(b"\x80\x02}q\x01(X\x01\x00\x00\x00a]q\x02(K\x01K\x02eU\x01bh\x02u.").unwrap();
        assert_eq!(int_list(&v.get("b").unwrap()).unwrap(), vec![1, 2]);
        assert_eq!(int_list(&v.get("a").unwrap()).unwrap(), vec![1, 2]);
    }

    /// Checks one of the fixtures below: `{b'batch_label': b'testing', b'labels': [3, 1],
    /// b'data': uint8 [[1, 2, 3], [250, 251, 252]], b'filenames': [b'a.png', b'b.png'],
    /// b'ids': int64 [-5, 7]}`.
    fn check_real_pickle(bytes: &[u8]) {
        let v = load(bytes).unwrap();
        assert_eq!(int_list(&v.get("labels").unwrap()).unwrap(), vec![3, 1]);
        assert_eq!(int_list(&v.get("ids").unwrap()).unwrap(), vec![-5, 7]);
        let files = text_list(&v.get("filenames").unwrap()).unwrap();
        assert_eq!(files, vec!["a.png", "b.png"]);
        let Some(Value::Array(data)) = v.get("data") else {
            panic!("no data array");
        };
        let data = data.borrow();
        assert_eq!(data.u8_rows(3).unwrap(), 2);
        assert_eq!(data.data.as_slice(), &[1, 2, 3, 250, 251, 252]);
    }

    /// Written by Python 2.7's cPickle at protocol 2 (as the official files were), from a
    /// stand-in numpy module whose `__reduce__` matches numpy's.
    #[test]
    fn reads_a_real_python2_pickle() {
        check_real_pickle(PY2_FIXTURE);
    }

    /// The same dict from Python 3.11 at protocol 2: bytes go through `_codecs.encode` and
    /// repeated objects through BINGET.
    #[test]
    fn reads_a_real_python3_protocol2_pickle() {
        check_real_pickle(PY3_FIXTURE);
    }

    const PY2_FIXTURE: &[u8] = b"\x80\x02\x7d\x71\x01\x28\x55\x04\x64\x61\x74\x61\x71\x02\x63\x6e\x75\x6d\x70\x79\x2e\x63\x6f\x72\
          \x65\x2e\x6d\x75\x6c\x74\x69\x61\x72\x72\x61\x79\x0a\x5f\x72\x65\x63\x6f\x6e\x73\x74\x72\x75\x63\
          \x74\x0a\x71\x03\x63\x6e\x75\x6d\x70\x79\x0a\x6e\x64\x61\x72\x72\x61\x79\x0a\x71\x04\x4b\x00\x85\
          \x71\x05\x55\x01\x62\x87\x52\x71\x06\x28\x4b\x01\x4b\x02\x4b\x03\x86\x71\x07\x63\x6e\x75\x6d\x70\
          \x79\x0a\x64\x74\x79\x70\x65\x0a\x71\x08\x55\x02\x75\x31\x71\x09\x89\x88\x87\x52\x71\x0a\x28\x4b\
          \x03\x55\x01\x7c\x4e\x4e\x4e\x4a\xff\xff\xff\xff\x4a\xff\xff\xff\xff\x4b\x00\x74\x62\x89\x55\x06\
          \x01\x02\x03\xfa\xfb\xfc\x71\x0b\x74\x62\x55\x06\x6c\x61\x62\x65\x6c\x73\x71\x0c\x5d\x71\x0d\x28\
          \x4b\x03\x4b\x01\x65\x55\x0b\x62\x61\x74\x63\x68\x5f\x6c\x61\x62\x65\x6c\x71\x0e\x55\x07\x74\x65\
          \x73\x74\x69\x6e\x67\x71\x0f\x55\x03\x69\x64\x73\x71\x10\x68\x03\x68\x04\x68\x05\x55\x01\x62\x87\
          \x52\x71\x11\x28\x4b\x01\x4b\x02\x85\x71\x12\x68\x08\x55\x02\x69\x38\x71\x13\x89\x88\x87\x52\x71\
          \x14\x28\x4b\x03\x55\x01\x3c\x4e\x4e\x4e\x4a\xff\xff\xff\xff\x4a\xff\xff\xff\xff\x4b\x00\x74\x62\
          \x89\x55\x10\xfb\xff\xff\xff\xff\xff\xff\xff\x07\x00\x00\x00\x00\x00\x00\x00\x71\x15\x74\x62\x55\
          \x09\x66\x69\x6c\x65\x6e\x61\x6d\x65\x73\x71\x16\x5d\x71\x17\x28\x55\x05\x61\x2e\x70\x6e\x67\x71\
          \x18\x55\x05\x62\x2e\x70\x6e\x67\x71\x19\x65\x75\x2e";

    const PY3_FIXTURE: &[u8] = b"\x80\x02\x7d\x71\x00\x28\x63\x5f\x63\x6f\x64\x65\x63\x73\x0a\x65\x6e\x63\x6f\x64\x65\x0a\x71\x01\
          \x58\x0b\x00\x00\x00\x62\x61\x74\x63\x68\x5f\x6c\x61\x62\x65\x6c\x71\x02\x58\x06\x00\x00\x00\x6c\
          \x61\x74\x69\x6e\x31\x71\x03\x86\x71\x04\x52\x71\x05\x68\x01\x58\x07\x00\x00\x00\x74\x65\x73\x74\
          \x69\x6e\x67\x71\x06\x68\x03\x86\x71\x07\x52\x71\x08\x68\x01\x58\x06\x00\x00\x00\x6c\x61\x62\x65\
          \x6c\x73\x71\x09\x68\x03\x86\x71\x0a\x52\x71\x0b\x5d\x71\x0c\x28\x4b\x03\x4b\x01\x65\x68\x01\x58\
          \x04\x00\x00\x00\x64\x61\x74\x61\x71\x0d\x68\x03\x86\x71\x0e\x52\x71\x0f\x63\x6e\x75\x6d\x70\x79\
          \x2e\x63\x6f\x72\x65\x2e\x6d\x75\x6c\x74\x69\x61\x72\x72\x61\x79\x0a\x5f\x72\x65\x63\x6f\x6e\x73\
          \x74\x72\x75\x63\x74\x0a\x71\x10\x63\x6e\x75\x6d\x70\x79\x0a\x6e\x64\x61\x72\x72\x61\x79\x0a\x71\
          \x11\x4b\x00\x85\x71\x12\x68\x01\x58\x01\x00\x00\x00\x62\x71\x13\x68\x03\x86\x71\x14\x52\x71\x15\
          \x87\x71\x16\x52\x71\x17\x28\x4b\x01\x4b\x02\x4b\x03\x86\x71\x18\x63\x6e\x75\x6d\x70\x79\x0a\x64\
          \x74\x79\x70\x65\x0a\x71\x19\x58\x02\x00\x00\x00\x75\x31\x71\x1a\x89\x88\x87\x71\x1b\x52\x71\x1c\
          \x28\x4b\x03\x58\x01\x00\x00\x00\x7c\x71\x1d\x4e\x4e\x4e\x4a\xff\xff\xff\xff\x4a\xff\xff\xff\xff\
          \x4b\x00\x74\x71\x1e\x62\x89\x68\x01\x58\x09\x00\x00\x00\x01\x02\x03\xc3\xba\xc3\xbb\xc3\xbc\x71\
          \x1f\x68\x03\x86\x71\x20\x52\x71\x21\x74\x71\x22\x62\x68\x01\x58\x09\x00\x00\x00\x66\x69\x6c\x65\
          \x6e\x61\x6d\x65\x73\x71\x23\x68\x03\x86\x71\x24\x52\x71\x25\x5d\x71\x26\x28\x68\x01\x58\x05\x00\
          \x00\x00\x61\x2e\x70\x6e\x67\x71\x27\x68\x03\x86\x71\x28\x52\x71\x29\x68\x01\x58\x05\x00\x00\x00\
          \x62\x2e\x70\x6e\x67\x71\x2a\x68\x03\x86\x71\x2b\x52\x71\x2c\x65\x68\x01\x58\x03\x00\x00\x00\x69\
          \x64\x73\x71\x2d\x68\x03\x86\x71\x2e\x52\x71\x2f\x68\x10\x68\x11\x68\x12\x68\x15\x87\x71\x30\x52\
          \x71\x31\x28\x4b\x01\x4b\x02\x85\x71\x32\x68\x19\x58\x02\x00\x00\x00\x69\x38\x71\x33\x89\x88\x87\
          \x71\x34\x52\x71\x35\x28\x4b\x03\x58\x01\x00\x00\x00\x3c\x71\x36\x4e\x4e\x4e\x4a\xff\xff\xff\xff\
          \x4a\xff\xff\xff\xff\x4b\x00\x74\x71\x37\x62\x89\x68\x01\x58\x18\x00\x00\x00\xc3\xbb\xc3\xbf\xc3\
          \xbf\xc3\xbf\xc3\xbf\xc3\xbf\xc3\xbf\xc3\xbf\x07\x00\x00\x00\x00\x00\x00\x00\x71\x38\x68\x03\x86\
          \x71\x39\x52\x71\x3a\x74\x71\x3b\x62\x75\x2e";

    #[test]
    fn mutated_python2_pickle_is_an_error_not_a_panic() {
        crate::testing::assert_no_panic_on_mutants("python 2 pickle", PY2_FIXTURE, 4000, |b| {
            let _ = load(b);
        });
    }
}
