//! `import rill`: the node API for Python, over the same Rust node library
//! (`rill-node`) that Rust nodes link, so a Python node speaks the same
//! protocol and reads shared memory in place.
//!
//! - [`Node`] connects from the environment the daemon set and yields
//!   [`Event`]s; blocking waits run without the GIL, in slices of
//!   [`SIGNAL_CHECK`] so Ctrl-C still reaches Python.
//! - A received payload is a [`Payload`]: it exports the bytes (inline, or
//!   the producer's shared-memory region) through the buffer protocol, and
//!   `event.data` is a read-only `memoryview` of it. The region goes back to
//!   the producer when the last Python reference (memoryview, numpy array)
//!   goes away.
//! - [`Sample`] is a writable buffer from `node.allocate(n)`, sent without a
//!   copy by `node.send(output, sample)`.

use std::ffi::{CString, c_int, c_void};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyBufferError, PyKeyError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyMemoryView};
use rill_node::RecvError;

pyo3::create_exception!(rill, RillError, pyo3::exceptions::PyRuntimeError, "An error from rill's node runtime.");

fn rill_error(e: impl std::fmt::Display) -> PyErr {
    RillError::new_err(e.to_string())
}

/// The longest a blocking wait runs without the GIL before Python gets to
/// handle signals (KeyboardInterrupt) and other threads' work.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// A running node: `rill.Node()` connects with the wiring the daemon put in
/// the environment (as a Rust node's `Node::from_env`).
#[pyclass(module = "rill", name = "Node", frozen)]
struct Node {
    // One lock for the connection: a wait holds it at most SIGNAL_CHECK.
    inner: Mutex<rill_node::Node>,
    id: String,
}

impl Node {
    fn with<R>(&self, f: impl FnOnce(&mut rill_node::Node) -> R) -> PyResult<R> {
        let mut node = self.inner.lock().map_err(|_| rill_error("the node's lock is poisoned (a thread panicked)"))?;
        Ok(f(&mut node))
    }

    /// The next event within `timeout` (forever if `None`); `None` on
    /// timeout or when the event stream has ended.
    fn wait(&self, py: Python<'_>, timeout: Option<Duration>) -> PyResult<Option<Event>> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let slice =
                deadline.map_or(SIGNAL_CHECK, |d| d.saturating_duration_since(Instant::now()).min(SIGNAL_CHECK));
            match py.detach(|| self.with(|node| node.recv_timeout(slice)))? {
                Ok(event) => return Event::new(py, event).map(Some),
                Err(RecvError::Finished) => return Ok(None),
                Err(RecvError::Timeout) => {}
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
        }
    }

    fn allocate_sample(&self, py: Python<'_>, len: usize) -> PyResult<rill_node::Sample> {
        // Waits (without the GIL) when receivers still hold every region.
        py.detach(|| self.with(|node| node.allocate(len)))?.map_err(rill_error)
    }
}

#[pymethods]
impl Node {
    #[new]
    fn new(py: Python<'_>) -> PyResult<Self> {
        // The daemon's socket is one fd that `from_env` takes over: a second
        // Node would wait for a start that came and then close the fd the
        // first one uses.
        static CREATED: AtomicBool = AtomicBool::new(false);
        if CREATED.swap(true, Ordering::AcqRel) {
            return Err(rill_error("this process already created its rill.Node: create it once and pass it around"));
        }
        let node = py.detach(rill_node::Node::from_env).map_err(rill_error)?;
        Ok(Self { id: node.id().to_owned(), inner: Mutex::new(node) })
    }

    /// This node's id in the dataflow.
    #[getter]
    fn id(&self) -> &str {
        &self.id
    }

    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Event>> {
        self.wait(py, None)
    }

    /// The next event, waiting at most `timeout` seconds (forever if None);
    /// None on timeout or once the event stream has ended.
    #[pyo3(signature = (timeout = None))]
    fn next(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Event>> {
        let timeout = match timeout {
            Some(t) if t.is_nan() || t < 0.0 => {
                return Err(PyValueError::new_err(format!("timeout must be a number of seconds >= 0, not {t}")));
            }
            // Too long to represent (or infinite): forever.
            Some(t) => Duration::try_from_secs_f64(t).ok(),
            None => None,
        };
        self.wait(py, timeout)
    }

    /// Sends a copy of `data` on `output`: bytes, bytearray, memoryview,
    /// anything with the buffer protocol (numpy arrays too) or a pyarrow
    /// array. To send without a copy, fill `allocate(n)` and `send` it.
    fn send_output(&self, py: Python<'_>, output: &str, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let source = as_buffer_source(data)?;
        let buffer = PyUntypedBuffer::get(&source).map_err(|e| {
            PyTypeError::new_err(format!(
                "send_output takes bytes, a buffer (numpy array, memoryview) or a pyarrow array, not {}: {e}",
                type_name(data)
            ))
        })?;
        if !buffer.is_c_contiguous() {
            return Err(PyValueError::new_err(
                "the data is not contiguous in memory: pass numpy.ascontiguousarray(data) or bytes(data)",
            ));
        }
        let len = buffer.len_bytes();
        self.with(|node| node.check_output(output))?.map_err(rill_error)?;
        let mut sample = self.allocate_sample(py, len)?;
        if len > 0 {
            // SAFETY: the exported buffer stays valid and `len` bytes long
            // while `buffer` is held (an exporter may give a null pointer only
            // for an empty buffer).
            let bytes = unsafe { std::slice::from_raw_parts(buffer.buf_ptr().cast::<u8>(), len) };
            sample.copy_from_slice(bytes);
        }
        drop(buffer);
        py.detach(|| self.with(|node| node.send_sample(output, sample)))?.map_err(rill_error)
    }

    /// A writable buffer of `n` bytes (shared memory from 4 KiB on) to fill,
    /// e.g. through `numpy.frombuffer(buf, dtype)`, and send with `send`.
    fn allocate(&self, py: Python<'_>, n: usize) -> PyResult<Sample> {
        if n < rill_node::SHM_THRESHOLD {
            return Ok(Sample::inline(n));
        }
        Ok(Sample::shared(self.allocate_sample(py, n)?))
    }

    /// Sends a buffer from `allocate` on `output` without copying it (a
    /// buffer under 4 KiB is copied into the message). Views of it (numpy
    /// arrays, memoryviews) must be gone first: the receivers read this
    /// memory in place, so it must not change after sending.
    fn send(&self, py: Python<'_>, output: &str, sample: &Bound<'_, Sample>) -> PyResult<()> {
        // A wrong name must not cost the filled buffer.
        self.with(|node| node.check_output(output))?.map_err(rill_error)?;
        let sample = sample.get();
        match sample.take_for_send()? {
            Some(shared) => py.detach(|| self.with(|node| node.send_sample(output, shared)))?.map_err(rill_error),
            None => {
                // SAFETY: the buffer is ours (inline) and no view of it is
                // exported any more: nothing writes it now.
                let bytes = unsafe { std::slice::from_raw_parts(sample.ptr as *const u8, sample.len) };
                py.detach(|| self.with(|node| node.send_output(output, bytes)))?.map_err(rill_error)
            }
        }
    }

    fn __repr__(&self) -> String {
        format!("rill.Node(id={:?})", self.id)
    }
}

/// A pyarrow array is sent as its values' bytes, viewed through numpy
/// without conversion: fixed-width types without nulls only (anything else
/// would silently change, e.g. integers with nulls become floats).
fn as_buffer_source<'py>(data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let is_arrow = type_module(data).is_some_and(|m| m.starts_with("pyarrow"));
    if !(is_arrow && data.hasattr("to_numpy")?) {
        return Ok(data.clone());
    }
    let nulls: usize = data.getattr("null_count").and_then(|n| n.extract()).unwrap_or(0);
    if nulls > 0 {
        return Err(PyValueError::new_err(format!(
            "this pyarrow array has {nulls} null(s), which have no bytes to send: fill them (array.fill_null(...)) or send bytes you encode"
        )));
    }
    let kwargs = PyDict::new(data.py());
    kwargs.set_item("zero_copy_only", true)?;
    data.call_method("to_numpy", (), Some(&kwargs)).map_err(|e| {
        PyTypeError::new_err(format!(
            "only pyarrow arrays of a fixed-width type (integers, floats) are sent as their bytes, not {}: {e}",
            type_name(data)
        ))
    })
}

fn type_module(data: &Bound<'_, PyAny>) -> Option<String> {
    data.get_type().getattr("__module__").ok()?.extract().ok()
}

fn type_name(data: &Bound<'_, PyAny>) -> String {
    data.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "an unknown type".into())
}

/// Something that happened to the node: `type` is "INPUT", "INPUT_CLOSED"
/// or "STOP". Also readable as `event["type"]`, `event["id"]`,
/// `event["value"]` and `event["metadata"]`.
#[pyclass(module = "rill", name = "Event", frozen)]
struct Event {
    kind: &'static str,
    id: Option<String>,
    /// A read-only memoryview over the payload (inputs only).
    data: Option<Py<PyAny>>,
    timestamp_ns: Option<u64>,
    shared: bool,
}

impl Event {
    fn new(py: Python<'_>, event: rill_node::Event) -> PyResult<Self> {
        Ok(match event {
            rill_node::Event::Input { id, metadata, data } => {
                let shared = data.is_shared();
                let payload = Bound::new(py, Payload { data })?;
                let view = PyMemoryView::from(payload.as_any())?;
                Self {
                    kind: "INPUT",
                    id: Some(id),
                    data: Some(view.into_any().unbind()),
                    timestamp_ns: Some(metadata.timestamp_ns),
                    shared,
                }
            }
            rill_node::Event::InputClosed { id } => {
                Self { kind: "INPUT_CLOSED", id: Some(id), data: None, timestamp_ns: None, shared: false }
            }
            rill_node::Event::Stop => Self { kind: "STOP", id: None, data: None, timestamp_ns: None, shared: false },
        })
    }

    fn value<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(data) = &self.data else { return Ok(None) };
        let view = data.bind(py);
        match pyarrow(py) {
            Some(pa) => {
                let pa = pa.bind(py);
                let buffer = pa.call_method1("py_buffer", (view,))?;
                let len = view.len()?;
                let buffers = PyList::new(py, [py.None().into_bound(py), buffer])?;
                let array =
                    pa.getattr("Array")?.call_method1("from_buffers", (pa.call_method0("uint8")?, len, buffers))?;
                Ok(Some(array))
            }
            None => Ok(Some(view.clone())),
        }
    }
}

/// pyarrow when it is installed (looked up once).
fn pyarrow(py: Python<'_>) -> Option<&Py<PyModule>> {
    static PYARROW: PyOnceLock<Option<Py<PyModule>>> = PyOnceLock::new();
    PYARROW.get_or_init(py, || py.import("pyarrow").ok().map(Bound::unbind)).as_ref()
}

#[pymethods]
impl Event {
    #[getter(r#type)]
    fn kind(&self) -> &'static str {
        self.kind
    }

    #[getter]
    fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The payload as a read-only memoryview (None for other events).
    #[getter]
    fn data<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.data.as_ref().map(|d| d.bind(py).clone())
    }

    /// `{"timestamp_ns": ...}`: when the producer sent it (CLOCK_REALTIME ns).
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let metadata = PyDict::new(py);
        if let Some(ts) = self.timestamp_ns {
            metadata.set_item("timestamp_ns", ts)?;
        }
        Ok(metadata)
    }

    /// True when the payload is read in place from the producer's shared
    /// memory (Rust's `Data::is_shared`).
    #[getter]
    fn is_shared(&self) -> bool {
        self.shared
    }

    fn __getitem__<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Bound<'py, PyAny>> {
        let none = || py.None().into_bound(py);
        Ok(match key {
            "type" => self.kind.into_pyobject(py)?.into_any(),
            "id" => self.id.clone().into_pyobject(py)?.into_any(),
            "value" => self.value(py)?.unwrap_or_else(none),
            "data" => self.data(py).unwrap_or_else(none),
            "metadata" => self.metadata(py)?.into_any(),
            _ => {
                return Err(PyKeyError::new_err(format!(
                    "{key:?}: an event has \"type\", \"id\", \"value\", \"data\" and \"metadata\""
                )));
            }
        })
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let len = self.data.as_ref().and_then(|d| d.bind(py).len().ok());
        match (&self.id, len) {
            (Some(id), Some(len)) => format!("rill.Event(type={:?}, id={id:?}, len={len})", self.kind),
            (Some(id), None) => format!("rill.Event(type={:?}, id={id:?})", self.kind),
            _ => format!("rill.Event(type={:?})", self.kind),
        }
    }
}

/// A received payload, exported read-only through the buffer protocol:
/// the object behind `event.data` (its `.obj`).
#[pyclass(module = "rill", name = "Payload", frozen)]
struct Payload {
    data: rill_node::Data,
}

#[pymethods]
impl Payload {
    /// True when the bytes are the producer's shared memory, read in place.
    #[getter]
    fn is_shared(&self) -> bool {
        self.data.is_shared()
    }

    /// The address of the first byte (to check where a view points).
    #[getter]
    fn address(&self) -> usize {
        self.data.as_ptr() as usize
    }

    fn __len__(&self) -> usize {
        self.data.len()
    }

    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("a received payload is read-only"));
        }
        let (ptr, len) = {
            let data = &slf.get().data;
            (data.as_ptr(), data.len())
        };
        // SAFETY: `view` comes from Python's buffer machinery; the bytes live
        // as long as this object, which the view keeps alive through `obj`.
        unsafe { fill_view(view, flags, ptr.cast_mut(), len, true, slf.into_any()) }
    }

    unsafe fn __releasebuffer__(&self, view: *mut ffi::Py_buffer) {
        // SAFETY: `view` is one this object filled in `__getbuffer__`.
        unsafe { release_view(view) }
    }
}

/// A writable buffer from `node.allocate(n)`, sent with `node.send`.
///
/// Its memory lives as long as this object, sent or not, so no view of it
/// can ever point at freed or unmapped memory: under 4 KiB it is a buffer of
/// its own (copied into the message at send), from 4 KiB on a region of the
/// node's shared-memory pool, kept mapped through `_mapping`.
#[pyclass(module = "rill", name = "Sample", frozen)]
struct Sample {
    /// The exported bytes: fixed at creation.
    ptr: usize,
    len: usize,
    /// Whether it is sent and how many views are exported, under one lock
    /// so a view cannot appear between `send`'s check and its hand-over.
    state: Mutex<SampleState>,
    _mapping: Option<std::sync::Arc<dyn std::any::Any + Send + Sync>>,
    /// Inline: the allocation behind `ptr` (freed on drop).
    owned: bool,
}

struct SampleState {
    /// The pool's sample until sent (None when inline).
    shared: Option<rill_node::Sample>,
    sent: bool,
    views: usize,
}

impl Sample {
    fn inline(len: usize) -> Self {
        let bytes: Box<[u8]> = vec![0u8; len].into_boxed_slice();
        let ptr = Box::into_raw(bytes).cast::<u8>() as usize;
        let state = SampleState { shared: None, sent: false, views: 0 };
        Self { ptr, len, state: Mutex::new(state), _mapping: None, owned: true }
    }

    fn shared(mut sample: rill_node::Sample) -> Self {
        let ptr = sample.as_mut_ptr() as usize;
        let len = sample.len();
        let mapping = sample.mapping();
        let state = SampleState { shared: Some(sample), sent: false, views: 0 };
        Self { ptr, len, state: Mutex::new(state), _mapping: mapping, owned: false }
    }

    fn lock(&self) -> PyResult<std::sync::MutexGuard<'_, SampleState>> {
        self.state.lock().map_err(|_| rill_error("the buffer's lock is poisoned"))
    }

    /// Marks it sent and returns the pool's sample (None when inline),
    /// unless it is viewed or was sent already.
    fn take_for_send(&self) -> PyResult<Option<rill_node::Sample>> {
        let mut state = self.lock()?;
        if state.sent {
            return Err(rill_error("this buffer was already sent: allocate a new one for each message"));
        }
        if state.views > 0 {
            return Err(rill_error(format!(
                "this buffer is still viewed by {} object(s) (a numpy array or memoryview made from it): \
                 delete them before sending (`del array`), since receivers read this memory in place",
                state.views
            )));
        }
        state.sent = true;
        Ok(state.shared.take())
    }
}

impl Drop for Sample {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: `ptr` and `len` came from `Box::into_raw` of a
            // `Box<[u8]>` of that length in `inline`, and are freed once.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr as *mut u8, self.len)) });
        }
    }
}

#[pymethods]
impl Sample {
    fn __len__(&self) -> usize {
        self.len
    }

    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        let this = slf.get();
        let mut state = this.lock()?;
        if state.sent {
            return Err(PyBufferError::new_err("this buffer was sent: allocate a new one"));
        }
        // SAFETY: the memory lives as long as this object, which the view
        // keeps alive through `obj`.
        unsafe { fill_view(view, flags, this.ptr as *mut u8, this.len, false, slf.clone().into_any())? };
        state.views += 1;
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, view: *mut ffi::Py_buffer) {
        if let Ok(mut state) = self.state.lock() {
            state.views = state.views.saturating_sub(1);
        }
        // SAFETY: `view` is one this object filled in `__getbuffer__`.
        unsafe { release_view(view) }
    }
}

/// Fills a one-dimensional byte view of `len` bytes at `ptr` owned by
/// `owner`.
///
/// # Safety
/// `view` must be a valid `Py_buffer` to fill, and `ptr..ptr+len` must stay
/// valid while `owner` lives.
unsafe fn fill_view(
    view: *mut ffi::Py_buffer,
    flags: c_int,
    ptr: *mut u8,
    len: usize,
    readonly: bool,
    owner: Bound<'_, PyAny>,
) -> PyResult<()> {
    if view.is_null() {
        return Err(PyBufferError::new_err("the buffer view is null"));
    }
    // SAFETY: `view` is valid (the caller's contract) and filled completely.
    unsafe {
        (*view).obj = owner.into_ptr();
        (*view).buf = ptr.cast::<c_void>();
        (*view).len = len as isize;
        (*view).readonly = c_int::from(readonly);
        (*view).itemsize = 1;
        (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
            CString::from(c"B").into_raw()
        } else {
            std::ptr::null_mut()
        };
        (*view).ndim = 1;
        (*view).shape = if flags & ffi::PyBUF_ND == ffi::PyBUF_ND { &mut (*view).len } else { std::ptr::null_mut() };
        (*view).strides =
            if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES { &mut (*view).itemsize } else { std::ptr::null_mut() };
        (*view).suboffsets = std::ptr::null_mut();
        (*view).internal = std::ptr::null_mut();
    }
    Ok(())
}

/// Frees what [`fill_view`] allocated for `view`.
///
/// # Safety
/// `view` must have been filled by [`fill_view`].
unsafe fn release_view(view: *mut ffi::Py_buffer) {
    // SAFETY: the format string, if any, came from `CString::into_raw`.
    unsafe {
        if !(*view).format.is_null() {
            drop(CString::from_raw((*view).format));
        }
    }
}

#[pymodule]
fn rill(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Node>()?;
    m.add_class::<Event>()?;
    m.add_class::<Payload>()?;
    m.add_class::<Sample>()?;
    m.add("RillError", m.py().get_type::<RillError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
