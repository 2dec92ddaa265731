//! The Linux `/dev/uhid` driver, by hand with std: the `struct uhid_event` layout of
//! `<linux/uhid.h>` (CREATE2, INPUT2, OUTPUT, DESTROY and the rest), the device it creates with the
//! FIDO report descriptor, and finding that device's hidraw node in sysfs.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

/// `sizeof(struct uhid_event)`: a u32 type, then the (packed) union.
pub const EVENT_SIZE: usize = 4380;

const UHID_DESTROY: u32 = 1;
const UHID_START: u32 = 2;
const UHID_STOP: u32 = 3;
const UHID_OPEN: u32 = 4;
const UHID_CLOSE: u32 = 5;
const UHID_OUTPUT: u32 = 6;
const UHID_GET_REPORT: u32 = 9;
const UHID_GET_REPORT_REPLY: u32 = 10;
const UHID_CREATE2: u32 = 11;
const UHID_INPUT2: u32 = 12;
const UHID_SET_REPORT: u32 = 13;
const UHID_SET_REPORT_REPLY: u32 = 14;

// Offsets in the event, checked against <linux/uhid.h> with offsetof().
const CREATE2_NAME: usize = 4;
const CREATE2_PHYS: usize = 132;
const CREATE2_UNIQ: usize = 196;
const CREATE2_RD_SIZE: usize = 260;
const CREATE2_BUS: usize = 262;
const CREATE2_VENDOR: usize = 264;
const CREATE2_PRODUCT: usize = 268;
const CREATE2_VERSION: usize = 272;
const CREATE2_COUNTRY: usize = 276;
const CREATE2_RD_DATA: usize = 280;
const DATA_MAX: usize = 4096;
const OUTPUT_DATA: usize = 4;
const OUTPUT_SIZE: usize = 4100;
const OUTPUT_RTYPE: usize = 4102;
const INPUT2_SIZE: usize = 4;
const INPUT2_DATA: usize = 6;
const REPORT_ID: usize = 4;
const REPLY_ERR: usize = 8;

/// `BUS_USB`: hidapi's hidraw backend lists uhid devices on this bus (not `BUS_VIRTUAL`).
pub const BUS_USB: u16 = 0x03;

/// The FIDO HID report descriptor: usage page 0xF1D0, usage 1, 64-byte input and output reports
/// without report ids.
pub const FIDO_REPORT_DESCRIPTOR: [u8; 34] = [
    0x06, 0xd0, 0xf1, // Usage Page (FIDO Alliance)
    0x09, 0x01, // Usage (CTAPHID)
    0xa1, 0x01, // Collection (Application)
    0x09, 0x20, //   Usage (Input Report Data)
    0x15, 0x00, //   Logical Minimum (0)
    0x26, 0xff, 0x00, //   Logical Maximum (255)
    0x75, 0x08, //   Report Size (8)
    0x95, 0x40, //   Report Count (64)
    0x81, 0x02, //   Input (Data, Var, Abs)
    0x09, 0x21, //   Usage (Output Report Data)
    0x15, 0x00, //   Logical Minimum (0)
    0x26, 0xff, 0x00, //   Logical Maximum (255)
    0x75, 0x08, //   Report Size (8)
    0x95, 0x40, //   Report Count (64)
    0x91, 0x02, //   Output (Data, Var, Abs)
    0xc0, // End Collection
];

/// What the kernel is told about the device.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// The product name (at most 127 bytes are kept).
    pub name: String,
    /// The physical path (at most 63 bytes).
    pub phys: String,
    /// The unique id, the HID serial number (at most 63 bytes).
    pub uniq: String,
    /// The bus, [`BUS_USB`].
    pub bus: u16,
    /// USB vendor id.
    pub vendor: u32,
    /// USB product id.
    pub product: u32,
    /// Device version.
    pub version: u32,
    /// HID country code.
    pub country: u32,
}

/// An event from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UhidEvent {
    /// A HID driver bound the device.
    Start,
    /// The driver let it go.
    Stop,
    /// Someone opened it (a hidraw node, say).
    Open,
    /// The last one closed it.
    Close,
    /// An output report from the host (through hidraw: a report id byte, 0, first).
    Output {
        /// The report.
        data: Vec<u8>,
        /// Its report type (`UHID_OUTPUT_REPORT` is 1).
        rtype: u8,
    },
    /// A GET_REPORT request, to answer with [`Uhid::reply_get_report`].
    GetReport {
        /// The request id.
        id: u32,
    },
    /// A SET_REPORT request, to answer with [`Uhid::reply_set_report`].
    SetReport {
        /// The request id.
        id: u32,
    },
    /// Any other event type.
    Other(u32),
}

fn put(event: &mut [u8], offset: usize, bytes: &[u8]) {
    event[offset..offset + bytes.len()].copy_from_slice(bytes);
}

fn put_str(event: &mut [u8], offset: usize, capacity: usize, text: &str) {
    let bytes = text.as_bytes();
    let n = bytes.len().min(capacity - 1); // Room for the terminating NUL.
    put(event, offset, &bytes[..n]);
}

fn new_event(kind: u32) -> Vec<u8> {
    let mut event = vec![0u8; EVENT_SIZE];
    put(&mut event, 0, &kind.to_ne_bytes());
    event
}

/// A UHID_CREATE2 event for `info` with report descriptor `descriptor` (at most 4096 bytes).
#[must_use]
pub fn create2_event(info: &DeviceInfo, descriptor: &[u8]) -> Vec<u8> {
    let mut event = new_event(UHID_CREATE2);
    put_str(&mut event, CREATE2_NAME, 128, &info.name);
    put_str(&mut event, CREATE2_PHYS, 64, &info.phys);
    put_str(&mut event, CREATE2_UNIQ, 64, &info.uniq);
    let descriptor = &descriptor[..descriptor.len().min(DATA_MAX)];
    put(
        &mut event,
        CREATE2_RD_SIZE,
        &(descriptor.len() as u16).to_ne_bytes(),
    );
    put(&mut event, CREATE2_BUS, &info.bus.to_ne_bytes());
    put(&mut event, CREATE2_VENDOR, &info.vendor.to_ne_bytes());
    put(&mut event, CREATE2_PRODUCT, &info.product.to_ne_bytes());
    put(&mut event, CREATE2_VERSION, &info.version.to_ne_bytes());
    put(&mut event, CREATE2_COUNTRY, &info.country.to_ne_bytes());
    put(&mut event, CREATE2_RD_DATA, descriptor);
    event
}

/// A UHID_INPUT2 event carrying one input report (at most 4096 bytes).
#[must_use]
pub fn input2_event(report: &[u8]) -> Vec<u8> {
    let mut event = new_event(UHID_INPUT2);
    let report = &report[..report.len().min(DATA_MAX)];
    put(
        &mut event,
        INPUT2_SIZE,
        &(report.len() as u16).to_ne_bytes(),
    );
    put(&mut event, INPUT2_DATA, report);
    event
}

/// A UHID_DESTROY event: the device is unplugged.
#[must_use]
pub fn destroy_event() -> Vec<u8> {
    new_event(UHID_DESTROY)
}

/// The events the kernel reads back: a UHID_GET_REPORT_REPLY or UHID_SET_REPORT_REPLY with
/// error `err` (an errno; 0 is success).
#[must_use]
pub fn report_reply_event(get: bool, id: u32, err: u16) -> Vec<u8> {
    let mut event = new_event(if get {
        UHID_GET_REPORT_REPLY
    } else {
        UHID_SET_REPORT_REPLY
    });
    put(&mut event, REPORT_ID, &id.to_ne_bytes());
    put(&mut event, REPLY_ERR, &err.to_ne_bytes());
    event
}

fn u32_at(event: &[u8], offset: usize) -> Option<u32> {
    let bytes = event.get(offset..offset + 4)?;
    Some(u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// The event in `bytes` as read from `/dev/uhid`.
#[must_use]
pub fn decode(bytes: &[u8]) -> Option<UhidEvent> {
    let kind = u32_at(bytes, 0)?;
    Some(match kind {
        UHID_START => UhidEvent::Start,
        UHID_STOP => UhidEvent::Stop,
        UHID_OPEN => UhidEvent::Open,
        UHID_CLOSE => UhidEvent::Close,
        UHID_OUTPUT => {
            let size = bytes.get(OUTPUT_SIZE..OUTPUT_SIZE + 2)?;
            let size = usize::from(u16::from_ne_bytes([size[0], size[1]])).min(DATA_MAX);
            UhidEvent::Output {
                data: bytes.get(OUTPUT_DATA..OUTPUT_DATA + size)?.to_vec(),
                rtype: *bytes.get(OUTPUT_RTYPE)?,
            }
        }
        UHID_GET_REPORT => UhidEvent::GetReport {
            id: u32_at(bytes, REPORT_ID)?,
        },
        UHID_SET_REPORT => UhidEvent::SetReport {
            id: u32_at(bytes, REPORT_ID)?,
        },
        other => UhidEvent::Other(other),
    })
}

/// The 64-byte CTAPHID report in an output report written through hidraw: without the leading
/// report id byte (0) of a 65-byte write.
#[must_use]
pub fn ctaphid_report(output: &[u8]) -> &[u8] {
    if output.len() > crate::ctaphid::REPORT_LEN {
        &output[1..]
    } else {
        output
    }
}

/// A device created through `/dev/uhid`; closing it (dropping the last handle) unplugs it too.
pub struct Uhid {
    file: File,
}

impl Uhid {
    /// Creates the device.
    ///
    /// # Errors
    /// When `/dev/uhid` cannot be opened (no uhid module, no permission) or refuses the device.
    pub fn create(info: &DeviceInfo, descriptor: &[u8]) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/uhid")?;
        let uhid = Self { file };
        uhid.write(&create2_event(info, descriptor))?;
        Ok(uhid)
    }

    fn write(&self, event: &[u8]) -> io::Result<()> {
        (&self.file).write_all(event)
    }

    /// Waits for the next event from the kernel.
    ///
    /// # Errors
    /// When reading fails.
    pub fn read_event(&self) -> io::Result<UhidEvent> {
        let mut buffer = vec![0u8; EVENT_SIZE];
        let n = (&self.file).read(&mut buffer)?;
        decode(&buffer[..n])
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short uhid event"))
    }

    /// Sends one input report to the host.
    ///
    /// # Errors
    /// When the kernel refuses it.
    pub fn send_input(&self, report: &[u8]) -> io::Result<()> {
        self.write(&input2_event(report))
    }

    /// Answers a GET_REPORT or SET_REPORT request with an error: this device has no feature
    /// reports.
    ///
    /// # Errors
    /// When the kernel refuses it.
    pub fn refuse_report(&self, get: bool, id: u32) -> io::Result<()> {
        const EIO: u16 = 5;
        self.write(&report_reply_event(get, id, EIO))
    }

    /// Unplugs the device.
    ///
    /// # Errors
    /// When the kernel refuses it.
    pub fn destroy(&self) -> io::Result<()> {
        self.write(&destroy_event())
    }
}

/// The `HID_NAME` and `HID_UNIQ` of a HID device's uevent file.
#[must_use]
pub fn uevent_name_and_uniq(uevent: &str) -> (Option<&str>, Option<&str>) {
    let mut name = None;
    let mut uniq = None;
    for line in uevent.lines() {
        if let Some(value) = line.strip_prefix("HID_NAME=") {
            name = Some(value);
        } else if let Some(value) = line.strip_prefix("HID_UNIQ=") {
            uniq = Some(value);
        }
    }
    (name, uniq)
}

/// The `/dev/hidrawN` of the HID device with this uniq (and name), from `/sys/class/hidraw`.
#[must_use]
pub fn find_hidraw(sys_class_hidraw: &Path, uniq: &str, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(sys_class_hidraw).ok()?.flatten() {
        let Ok(uevent) = std::fs::read_to_string(entry.path().join("device/uevent")) else {
            continue;
        };
        let (found_name, found_uniq) = uevent_name_and_uniq(&uevent);
        if found_uniq == Some(uniq) && found_name == Some(name) {
            return Some(Path::new("/dev").join(entry.file_name()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> DeviceInfo {
        DeviceInfo {
            name: "Tessera Virtual Key".into(),
            phys: "tessera-virtual-key".into(),
            uniq: "vk-1".into(),
            bus: BUS_USB,
            vendor: 0x1209,
            product: 0x0001,
            version: 0x0100,
            country: 0,
        }
    }

    #[test]
    fn create2_lays_out_the_fields_where_uhid_h_has_them() {
        let event = create2_event(&info(), &FIDO_REPORT_DESCRIPTOR);
        assert_eq!(event.len(), EVENT_SIZE);
        assert_eq!(u32_at(&event, 0), Some(11));
        assert_eq!(&event[4..23], b"Tessera Virtual Key");
        assert_eq!(event[23], 0);
        assert_eq!(&event[196..200], b"vk-1");
        assert_eq!(u16::from_ne_bytes([event[260], event[261]]), 34);
        assert_eq!(u16::from_ne_bytes([event[262], event[263]]), 3);
        assert_eq!(u32_at(&event, 264), Some(0x1209));
        assert_eq!(u32_at(&event, 268), Some(1));
        assert_eq!(&event[280..314], &FIDO_REPORT_DESCRIPTOR);
        assert!(event[314..].iter().all(|&b| b == 0));
    }

    #[test]
    fn long_names_keep_their_terminating_nul() {
        let mut long = info();
        long.name = "x".repeat(300);
        long.uniq = "y".repeat(300);
        let event = create2_event(&long, &FIDO_REPORT_DESCRIPTOR);
        assert_eq!(event[4 + 127], 0);
        assert_eq!(event[196 + 63], 0);
        assert_eq!(event[196 + 62], b'y');
    }

    #[test]
    fn input2_and_destroy_and_replies() {
        let event = input2_event(&[7u8; 64]);
        assert_eq!(u32_at(&event, 0), Some(12));
        assert_eq!(u16::from_ne_bytes([event[4], event[5]]), 64);
        assert_eq!(&event[6..70], &[7u8; 64]);
        assert_eq!(event[70], 0);
        assert_eq!(u32_at(&destroy_event(), 0), Some(1));
        let reply = report_reply_event(true, 42, 5);
        assert_eq!(u32_at(&reply, 0), Some(10));
        assert_eq!(u32_at(&reply, 4), Some(42));
        assert_eq!(u16::from_ne_bytes([reply[8], reply[9]]), 5);
    }

    #[test]
    fn output_events_decode_and_lose_their_report_id() {
        let mut event = new_event(UHID_OUTPUT);
        let mut written = vec![0u8];
        written.extend_from_slice(&[0xab; 64]);
        put(&mut event, OUTPUT_DATA, &written);
        put(&mut event, OUTPUT_SIZE, &65u16.to_ne_bytes());
        event[OUTPUT_RTYPE] = 1;
        let Some(UhidEvent::Output { data, rtype }) = decode(&event) else {
            panic!("an output event");
        };
        assert_eq!((data.len(), rtype), (65, 1));
        assert_eq!(ctaphid_report(&data), &[0xab; 64]);
        assert_eq!(ctaphid_report(&[1u8; 64]), &[1u8; 64]);
        assert_eq!(decode(&new_event(UHID_START)), Some(UhidEvent::Start));
        assert_eq!(decode(&new_event(UHID_OPEN)), Some(UhidEvent::Open));
        assert_eq!(decode(&new_event(99)), Some(UhidEvent::Other(99)));
        assert_eq!(decode(&[1, 0]), None);
    }

    #[test]
    fn the_hidraw_node_is_found_by_uniq_and_name() {
        let sys = std::env::temp_dir().join(format!("vk-sys-{}", std::process::id()));
        for (node, uevent) in [
            (
                "hidraw0",
                "HID_ID=0003:0000046D:0000C52B\nHID_NAME=Mouse\nHID_UNIQ=\n",
            ),
            (
                "hidraw3",
                "HID_ID=0003:00001209:00000001\nHID_NAME=Tessera Virtual Key\nHID_UNIQ=vk-2\n",
            ),
            (
                "hidraw5",
                "HID_ID=0003:00001209:00000001\nHID_NAME=Tessera Virtual Key\nHID_UNIQ=vk-1\n",
            ),
        ] {
            std::fs::create_dir_all(sys.join(node).join("device")).expect("dir");
            std::fs::write(sys.join(node).join("device/uevent"), uevent).expect("uevent");
        }
        assert_eq!(
            find_hidraw(&sys, "vk-1", "Tessera Virtual Key"),
            Some(PathBuf::from("/dev/hidraw5"))
        );
        assert_eq!(find_hidraw(&sys, "vk-9", "Tessera Virtual Key"), None);
        std::fs::remove_dir_all(&sys).expect("cleaned");
    }
}
