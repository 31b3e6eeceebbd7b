//! Unified kernel images (`EFI/Linux/*.efi`, boot loader specification type #2): a PE file
//! whose sections carry the kernel (`.linux`), the initrd (`.initrd`) and the command line
//! (`.cmdline`).
//!
//! Only the PE section table is read (the DOS header's pointer to the PE header, the COFF
//! header's section count, 40 bytes per section): three fields, each bounds-checked, which
//! a general object-file crate would not make safer.

use super::fs::ReadError;
use super::{BootChoice, Image, ImageBootError, Method, Source, bls};

/// Most sections looked at.
const MAX_SECTIONS: usize = 96;

/// The raw data of section `name` in the PE image `pe`.
fn pe_section<'a>(pe: &'a [u8], name: &str) -> Result<&'a [u8], ReadError> {
    let bad = |why: &str| ReadError::Pe(why.to_string());
    let u16_at =
        |at: usize| -> Option<u16> { pe.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]])) };
    let u32_at = |at: usize| -> Option<u32> {
        pe.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if pe.get(..2) != Some(b"MZ") {
        return Err(bad("not a PE image (no MZ header)"));
    }
    let pe_at = u32_at(0x3c)
        .and_then(|o| usize::try_from(o).ok())
        .ok_or_else(|| bad("truncated"))?;
    if pe.get(pe_at..pe_at + 4) != Some(b"PE\0\0") {
        return Err(bad("not a PE image (no PE signature)"));
    }
    let coff = pe_at + 4;
    let count = usize::from(u16_at(coff + 2).ok_or_else(|| bad("truncated"))?);
    let optional = usize::from(u16_at(coff + 16).ok_or_else(|| bad("truncated"))?);
    let table = coff + 20 + optional;
    for i in 0..count.min(MAX_SECTIONS) {
        let s = table + 40 * i;
        let raw_name = pe
            .get(s..s + 8)
            .ok_or_else(|| bad("truncated section table"))?;
        let end = raw_name.iter().position(|b| *b == 0).unwrap_or(8);
        if &raw_name[..end] != name.as_bytes() {
            continue;
        }
        let virtual_size = u32_at(s + 8).ok_or_else(|| bad("truncated"))?;
        let raw_size = u32_at(s + 16).ok_or_else(|| bad("truncated"))?;
        let raw_at = u32_at(s + 20).ok_or_else(|| bad("truncated"))?;
        // The data is raw_size bytes (file alignment padding included) of which
        // virtual_size are the section's.
        let len = if virtual_size == 0 {
            raw_size
        } else {
            virtual_size.min(raw_size)
        };
        let past_end = || ReadError::Pe(format!("section {name} runs past the end of the file"));
        let start = usize::try_from(raw_at).map_err(|_| past_end())?;
        let len = usize::try_from(len).map_err(|_| past_end())?;
        let end = start.checked_add(len).ok_or_else(past_end)?;
        return pe.get(start..end).ok_or_else(past_end);
    }
    Err(ReadError::Pe(format!("no {name} section")))
}

/// The bytes of section `name` of the UKI at `path` on partition `index`.
pub(super) fn section(
    image: &Image,
    index: Option<usize>,
    path: &str,
    name: &str,
) -> Result<Vec<u8>, ReadError> {
    let pe = image.fs(index).ok_or(ReadError::NoFileSystem)?.read(path)?;
    pe_section(&pe, name).map(<[u8]>::to_vec)
}

/// The kernel, initrd and command line of the UKI at `path`.
pub(super) fn sources(
    image: &Image,
    index: Option<usize>,
    path: &str,
) -> Result<(Source, Vec<Source>, String), ImageBootError> {
    let fail = |e: ReadError| ImageBootError::Config {
        config: image.located(index, path),
        why: net::error::Chain(&e).to_string(),
    };
    let pe = image
        .fs(index)
        .ok_or(ReadError::NoFileSystem)
        .and_then(|fs| fs.read(path))
        .map_err(fail)?;
    pe_section(&pe, ".linux").map_err(fail)?;
    let initrds = if pe_section(&pe, ".initrd").is_ok() {
        vec![Source::Section(index, path.to_string(), ".initrd")]
    } else {
        Vec::new()
    };
    let cmdline = pe_section(&pe, ".cmdline")
        .map(|c| {
            String::from_utf8_lossy(c)
                .trim_end_matches('\0')
                .trim()
                .to_string()
        })
        .unwrap_or_default();
    Ok((
        Source::Section(index, path.to_string(), ".linux"),
        initrds,
        cmdline,
    ))
}

/// The newest unified kernel image in `EFI/Linux` of the EFI system partition.
pub(super) fn find(image: &Image) -> Result<Option<BootChoice>, ImageBootError> {
    for (index, f) in image.each() {
        if !image.is_esp(index) {
            continue;
        }
        let mut names: Vec<String> = f
            .list("/EFI/Linux")
            .into_iter()
            .filter(|n| n.to_ascii_lowercase().ends_with(".efi"))
            .collect();
        names.sort_by(|a, b| bls::version_cmp(b, a));
        let Some(name) = names.first() else {
            continue;
        };
        let path = format!("/EFI/Linux/{name}");
        let (kernel, initrds, cmdline) = sources(image, index, &path)?;
        return Ok(Some(BootChoice {
            method: Method::Uki,
            config: image.located(index, &path),
            entry: name.clone(),
            kernel,
            initrds,
            cmdline,
            partitions: Vec::new(),
        }));
    }
    Ok(None)
}

#[cfg(test)]
pub(super) mod tests {
    use super::pe_section;

    /// A PE image with the given sections (name, data), laid out as a linker would.
    pub(crate) fn pe(sections: &[(&str, &[u8])]) -> Vec<u8> {
        let mut f = vec![0u8; 0x80];
        f[..2].copy_from_slice(b"MZ");
        f[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        f.extend_from_slice(b"PE\0\0");
        let mut coff = [0u8; 20];
        coff[..2].copy_from_slice(&0x8664u16.to_le_bytes());
        coff[2..4].copy_from_slice(&u16::try_from(sections.len()).unwrap().to_le_bytes());
        coff[16..18].copy_from_slice(&240u16.to_le_bytes());
        f.extend_from_slice(&coff);
        f.extend_from_slice(&[0u8; 240]);
        let table_end = f.len() + 40 * sections.len();
        let mut data_at = table_end.next_multiple_of(512);
        let mut data = Vec::new();
        for (name, bytes) in sections {
            let mut s = [0u8; 40];
            s[..name.len()].copy_from_slice(name.as_bytes());
            s[8..12].copy_from_slice(&u32::try_from(bytes.len()).unwrap().to_le_bytes());
            let raw = bytes.len().next_multiple_of(512);
            s[16..20].copy_from_slice(&u32::try_from(raw).unwrap().to_le_bytes());
            s[20..24].copy_from_slice(&u32::try_from(data_at).unwrap().to_le_bytes());
            f.extend_from_slice(&s);
            let mut d = bytes.to_vec();
            d.resize(raw, 0);
            data.extend(d);
            data_at += raw;
        }
        f.resize(table_end.next_multiple_of(512), 0);
        f.extend(data);
        f
    }

    #[test]
    fn sections_are_found_by_name_and_bounded() {
        let image = pe(&[
            (".osrel", b"ID=x"),
            (".cmdline", b"root=/dev/vda2 ro\0"),
            (".linux", b"KERNEL"),
        ]);
        assert_eq!(pe_section(&image, ".linux").unwrap(), b"KERNEL");
        assert_eq!(
            pe_section(&image, ".cmdline").unwrap(),
            b"root=/dev/vda2 ro\0"
        );
        assert!(
            pe_section(&image, ".initrd")
                .unwrap_err()
                .to_string()
                .contains("no .initrd")
        );
        pe_section(b"MZ", ".linux").unwrap_err();
        let mut truncated = image.clone();
        truncated.truncate(0x200);
        pe_section(&truncated, ".linux").unwrap_err();
        let mut lying = image;
        // A section whose data is said to be far past the end of the file.
        let at = 0x80 + 24 + 240 + 2 * 40 + 20;
        lying[at..at + 4].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
        pe_section(&lying, ".linux").unwrap_err();
    }
}
