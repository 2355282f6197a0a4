# -*- coding: utf-8 -*-
# Copyright: virtfleet.compute contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Image safety the way Nova checks it since CVE-2024-32498, with the inspector Nova itself uses.

An untrusted disk image can make QEMU open other files on the host: a qcow2 backing file or external data file,
a VMDK whose descriptor names flat or external extents, or a file of one format declared as another so that
QEMU's own probing picks the dangerous reading. oslo.utils' ``format_inspector`` parses just enough of every known
format, streaming, to detect the format and run the safety checks; this module adds an allow-list, the
declared-versus-detected comparison, hashes computed in the same pass, and messages that say what to do.

Whatever passes here must still be given to libvirt with its format set explicitly (``<driver type='...'>``),
never probed.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import errno
import hashlib
import logging
import os
import stat
import struct
import traceback

from ansible_collections.virtfleet.compute.plugins.module_utils._errors import (
    MissingLibraryError,
    NotFoundError,
    UnsafeImageError,
    ValidationError,
    VirtfleetError,
)

try:
    from oslo_utils.imageutils import format_inspector

    HAS_FORMAT_INSPECTOR = True
    FORMAT_INSPECTOR_IMPORT_ERROR = None
    # The inspector logs every failed check at WARNING/ERROR; with no handler configured Python's last-resort
    # handler would print them to the module's stderr. We report the same facts in the error we raise.
    logging.getLogger(format_inspector.__name__).addHandler(logging.NullHandler())
except ImportError:
    HAS_FORMAT_INSPECTOR = False
    FORMAT_INSPECTOR_IMPORT_ERROR = traceback.format_exc()

DEFAULT_ALLOWED_FORMATS = ("raw", "qcow2")

# The inspectors capture a region when it becomes complete, from the chunk that completes it: a VMDK text
# descriptor is parsed from the first chunk alone. Whatever sizes the caller feeds (a network read may be a few
# bytes), the inspectors get chunks of this size, larger than the biggest region any of them reads from the start
# (the VMDK descriptor, 1 MiB - 1), so detection does not depend on how the bytes arrived.
INSPECT_CHUNK = 1024 * 1024
READ_SIZE = INSPECT_CHUNK

# What the "gpt" inspector detects is a partition table (protective GPT or plain MBR) at the start of a raw disk.
# Like Nova, a whole-disk image with a valid partition table is a raw image.
_PARTITION_TABLE = "gpt"

_QCOW2_CRYPT_METHOD = slice(32, 36)

# Signatures of other formats, by offset, as libvirt's storage prober (storage_file_probe.c) and QEMU's format
# probes look for them. format_inspector only names a format once its whole header is there, so a file that holds
# just the first bytes of a qcow2 (48 bytes, say) reads as raw; libvirt's pool refresh still sees the signature,
# fails to parse the rest, and the failed refresh hides every volume of the pool until the file is removed by hand.
# Content whose detected format is raw must therefore carry none of these signatures.
FOREIGN_SIGNATURES = (
    (0, b"QFI\xfb", "qcow or qcow2"),
    (0, b"QED\x00", "qed"),
    (0, b"KDMV", "vmdk (sparse extent)"),
    (0, b"# Disk DescriptorFile", "vmdk (text descriptor)"),
    (0, b"COWD", "vmdk (ESX sparse extent)"),
    (0, b"vhdxfile", "vhdx"),
    (0, b"conectix", "vhd (vpc)"),
    (64, b"\x7f\x10\xda\xbe", "vdi"),
    (0, b"LUKS\xba\xbe", "luks"),
    (0, b"WithoutFreeSpace", "parallels"),
    (0, b"WithouFreSpacExt", "parallels (ploop)"),
    (0, b"OOOM", "cow (user-mode Linux)"),
    (0, b"Bochs Virtual HD Image", "bochs"),
    (0, b"#!/bin/sh\n#V2.0 Format", "cloop"),
    (32769, b"CD001", "iso9660"),
)
_SIGNATURE_SPAN = max(offset + len(magic) for offset, magic, _name in FOREIGN_SIGNATURES)

# The inspector lower-cases the VMDK descriptor; give users back the spelling their tools print.
_VMDK_SUBFORMATS = {name.lower(): name for name in (
    "monolithicFlat", "twoGbMaxExtentFlat", "twoGbMaxExtentSparse", "vmfs", "vmfsSparse", "vmfsThin", "vmfsRaw",
    "vmfsRDM", "vmfsRawDeviceMap", "vmfsPassthroughRawDeviceMap", "fullDevice", "partitionedDevice",
    "custom", "streamOptimized", "monolithicSparse",
)}

_HINT_CONVERT = "convert it to a self-contained image first: qemu-img convert -O qcow2 SOURCE DEST.qcow2"

ImageReport = collections.namedtuple(
    "ImageReport", ["format", "detected_format", "virtual_size", "actual_size", "sha256", "digests"]
)
ImageReport.__doc__ = """What inspection found in an image that passed it.

format: the format to give libvirt (``raw`` for a partitioned whole-disk image). detected_format: what the
inspector recognized (``gpt`` for such a disk). virtual_size: the guest-visible disk size in bytes.
actual_size: the bytes read. sha256: hex digest. digests: ``{algorithm: hex digest}`` for every algorithm asked.
"""


def known_formats():
    """The disk formats the installed oslo.utils can recognize (its list grows with new releases)."""
    _require_inspector()
    return tuple(sorted(name for name in format_inspector.ALL_FORMATS if name != _PARTITION_TABLE))


class Inspector:
    """Inspect an image while it streams: ``feed()`` every chunk, then ``finish()``.

    ``declared_format`` is what the user says the image is; ``None`` accepts whatever allowed format is found.
    ``allowed_formats`` is the allow-list (default raw and qcow2). ``field`` names the option the image came from
    in errors; ``format_field`` the option that declared its format. ``hash_algorithms`` are hashlib names; sha256
    is always computed.

    :raises ValidationError: at once, for a declared format that is unknown or not allowed, so that a download
        need not start.
    """

    def __init__(self, declared_format=None, allowed_formats=DEFAULT_ALLOWED_FORMATS, field="image",
                 format_field="disk_format", hash_algorithms=("sha256",)):
        _require_inspector()
        self._field = field
        self._format_field = format_field
        self._allowed = self._check_allowed(allowed_formats)
        self._declared = self._check_declared(declared_format)
        if isinstance(hash_algorithms, str):
            hash_algorithms = (hash_algorithms,)
        self._hashes = collections.OrderedDict()
        for name in ("sha256",) + tuple(a for a in hash_algorithms if a != "sha256"):
            try:
                self._hashes[name] = hashlib.new(name)
            except (ValueError, TypeError):
                raise ValidationError("%r is not a hash algorithm available here" % (name,), field="hash_algorithms")
        self._source = _ChunkSource()
        self._wrapper = format_inspector.InspectWrapper(self._source)
        self._pending = bytearray()
        self._head = bytearray()
        self._size = 0
        self._finished = False

    @property
    def bytes_read(self):
        """How many bytes were fed so far (to enforce a size limit while downloading)."""
        return self._size

    def feed(self, chunk):
        """Present the next bytes of the image, in order."""
        if self._finished:
            raise RuntimeError("Inspector.feed() called after finish()")
        if not chunk:
            return
        for digest in self._hashes.values():
            digest.update(chunk)
        if len(self._head) < _SIGNATURE_SPAN:
            self._head += chunk[:_SIGNATURE_SPAN - len(self._head)]
        self._size += len(chunk)
        view = memoryview(chunk)
        if self._pending:
            need = INSPECT_CHUNK - len(self._pending)
            self._pending += view[:need]
            view = view[need:]
            if len(self._pending) < INSPECT_CHUNK:
                return
            self._eat(bytes(self._pending))
            self._pending = bytearray()
        while len(view) >= INSPECT_CHUNK:
            self._eat(view[:INSPECT_CHUNK].tobytes())
            view = view[INSPECT_CHUNK:]
        self._pending += view

    def finish(self, declared_format=None):
        """Decide: return an ImageReport, or raise UnsafeImageError saying what was found and what to do.

        ``declared_format``, when given, replaces the one given to the constructor.
        """
        if self._finished:
            raise RuntimeError("Inspector.finish() called twice")
        if declared_format is not None:
            self._declared = self._check_declared(declared_format)
        if self._pending:
            self._eat(bytes(self._pending))
            self._pending = bytearray()
        self._wrapper.close()
        self._finished = True

        if self._size == 0:
            raise ValidationError("is empty (0 bytes); was the upload or download cut short?",
                                  field=self._field)
        inspector = self._detect()
        detected = str(inspector)
        self._safety_check(inspector, detected)

        fmt = "raw" if detected == _PARTITION_TABLE else detected
        declared = self._declared
        if fmt == "raw":
            self._foreign_signature_check(detected)
        if fmt not in self._allowed:
            what = "the content is %s" % _describe(detected)
            if declared is not None and declared != fmt:
                what = "declared %s but the content is %s" % (declared, _describe(detected))
            raise UnsafeImageError(
                "%s, a format that is not allowed (allowed: %s); %s"
                % (what, ", ".join(self._allowed), _HINT_CONVERT),
                field=self._field, found=fmt, allowed=list(self._allowed),
            )
        if declared is not None and declared != fmt:
            raise UnsafeImageError(
                "declared %s but the content is %s. Using it as %s would make QEMU read it in the wrong "
                "format; declare it as %s, or convert it: qemu-img convert -O %s SOURCE DEST"
                % (declared, _describe(detected), declared, fmt, declared),
                field=self._field, found=fmt, declared=declared,
            )

        if fmt == "raw":
            virtual_size = self._size
        else:
            virtual_size = inspector.virtual_size
        digests = {name: digest.hexdigest() for name, digest in self._hashes.items()}
        return ImageReport(format=fmt, detected_format=detected, virtual_size=virtual_size, actual_size=self._size,
                           sha256=digests["sha256"], digests=digests)

    def _eat(self, data):
        self._source.chunk = data
        self._wrapper.read(len(data))

    def _detect(self):
        try:
            if hasattr(self._wrapper, "formats"):
                matches = self._wrapper.formats
            else:
                # oslo.utils < 7.4 has only .format, which raises ImageFormatError on several matches.
                matches = [self._wrapper.format]
        except format_inspector.ImageFormatError as exc:
            raise UnsafeImageError(
                "the format could not be determined safely (%s); a file that reads as more than one format is "
                "refused" % exc,
                field=self._field,
            )
        if not matches or matches[0] is None:
            raise UnsafeImageError("the format could not be determined", field=self._field)
        if len(matches) > 1:
            names = ", ".join(sorted(str(m) for m in matches))
            raise UnsafeImageError(
                "the content reads as more than one format at once (%s); a file that one reader takes for one "
                "format and the next for another is refused. Rebuild it as plain raw or qcow2." % names,
                field=self._field, found=sorted(str(m) for m in matches),
            )
        return matches[0]

    def _safety_check(self, inspector, detected):
        try:
            inspector.safety_check()
        except format_inspector.SafetyCheckFailed as exc:
            reasons = [_explain(inspector, detected, name, failure)
                       for name, failure in sorted(exc.failures.items())]
            raise UnsafeImageError(
                "refused by the safety inspection: %s" % "; ".join(reasons),
                field=self._field, found=detected, checks=sorted(exc.failures),
            )
        except format_inspector.ImageFormatError as exc:
            raise UnsafeImageError(
                "the %s image could not be fully inspected (%s); it may be truncated or malformed" % (detected, exc),
                field=self._field, found=detected,
            )
        if detected == "qcow2":
            (crypt_method,) = struct.unpack(">I", bytes(inspector.region("header").data[_QCOW2_CRYPT_METHOD]))
            if crypt_method != 0:
                # Not a host-file risk, but no server could boot from it without its secret: refuse it here
                # rather than as an obscure QEMU error at first boot.
                raise UnsafeImageError(
                    "the qcow2 content is encrypted (crypt method %d); a base image must be readable without a "
                    "secret. Decrypt it first: qemu-img convert --object secret,id=sec0,file=KEYFILE --image-opts "
                    "driver=qcow2,file.filename=SOURCE,encrypt.key-secret=sec0 -O qcow2 DEST.qcow2" % crypt_method,
                    field=self._field, found=detected, checks=["encryption"],
                )

    def _foreign_signature_check(self, detected):
        head = bytes(self._head)
        for offset, magic, name in FOREIGN_SIGNATURES:
            if head[offset:offset + len(magic)] == magic:
                raise UnsafeImageError(
                    "the content reads as %s but carries the signature of a %s image at byte %d (it is %d bytes: a "
                    "truncated or malformed %s image, or a format this inspection cannot check). libvirt and QEMU "
                    "probe that signature: taken as raw it disguises one format as another, and a file libvirt "
                    "cannot parse makes its storage pool fail to refresh, hiding all the pool's volumes. Refused; "
                    "rebuild the image: qemu-img convert -O qcow2 SOURCE DEST.qcow2"
                    % (_describe(detected), name, offset, self._size, name),
                    field=self._field, found=name, checks=["signature"],
                )

    def _check_allowed(self, allowed_formats):
        if isinstance(allowed_formats, str):
            allowed_formats = [allowed_formats]
        known = known_formats()
        result = []
        for name in allowed_formats or ():
            if name not in known:
                raise ValidationError(
                    "%r is not a disk format this inspection knows (known: %s)" % (name, ", ".join(known)),
                    field="allowed_formats",
                )
            if name not in result:
                result.append(name)
        if not result:
            raise ValidationError("at least one format must be allowed", field="allowed_formats")
        return tuple(result)

    def _check_declared(self, declared):
        if declared is None:
            return None
        if declared == _PARTITION_TABLE:
            raise ValidationError(
                "'gpt' is a partition table, not a disk format; declare a partitioned whole-disk image as raw",
                field=self._format_field,
            )
        known = known_formats()
        if declared not in known:
            raise ValidationError(
                "%r is not a known disk format (known: %s)" % (declared, ", ".join(known)), field=self._format_field
            )
        if declared not in self._allowed:
            raise ValidationError(
                "images of format %s are not allowed (allowed: %s); %s"
                % (declared, ", ".join(self._allowed), _HINT_CONVERT),
                field=self._format_field,
            )
        return declared


def inspect_file(path, declared_format=None, allowed_formats=DEFAULT_ALLOWED_FORMATS, field="image",
                 format_field="disk_format", hash_algorithms=("sha256",)):
    """Open the file at ``path`` (see open_image_file), read it once (hashes and inspection in the same pass) and
    return an ImageReport.

    :raises UnsafeImageError: what was found and what to do about it.
    :raises ValidationError: bad arguments, an empty file, or a path that is not a regular file.
    :raises NotFoundError: no such file.
    """
    fd = open_image_file(path, field=field)
    try:
        return inspect_fd(fd, declared_format=declared_format, allowed_formats=allowed_formats, field=field,
                          format_field=format_field, hash_algorithms=hash_algorithms, name=path)
    finally:
        os.close(fd)


def inspect_fd(fd, declared_format=None, allowed_formats=DEFAULT_ALLOWED_FORMATS, field="image",
               format_field="disk_format", hash_algorithms=("sha256",), name="the image file"):
    """Read an open file from its start to its end (hashes and inspection in the same pass); return an ImageReport.

    Whoever uploads the image afterwards must upload from this same descriptor, and only ``actual_size`` bytes of
    it: the bytes inspected are then the bytes imported, whatever happens to the path meanwhile.
    """
    inspector = Inspector(declared_format=declared_format, allowed_formats=allowed_formats, field=field,
                          format_field=format_field, hash_algorithms=hash_algorithms)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        while True:
            chunk = os.read(fd, READ_SIZE)
            if not chunk:
                break
            inspector.feed(chunk)
    except OSError as exc:
        raise VirtfleetError("cannot read the image file %s: %s" % (name, exc), field=field)
    return inspector.finish()


def _file_kind(mode):
    for test, kind in ((stat.S_ISLNK, "symbolic link"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "special file"


def check_image_path(path, field="image"):
    """Refuse, by what it is, a path that is not a regular file, before anything is opened.

    A symbolic link is refused rather than followed: whoever can place a link where the image is expected would
    choose which host file gets imported (and then read by every guest built on it). Devices, FIFOs, sockets and
    directories are no image files; a FIFO or a device could also block the module forever.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise NotFoundError("no such file where the module runs: %s" % path, field=field)
    except OSError as exc:
        raise VirtfleetError("cannot read the image file %s: %s" % (path, exc), field=field)
    _refuse_kind(path, st.st_mode, field)


def _refuse_kind(path, mode, field):
    kind = _file_kind(mode)
    if kind == "symbolic link":
        try:
            target = " (to %s)" % os.readlink(path)
        except OSError:
            target = ""
        raise ValidationError(
            "%s is a symbolic link%s; links are not followed, so that nobody can redirect the import to another "
            "host file. Give the path of the image file itself" % (path, target), field=field)
    if kind is not None:
        raise ValidationError("%s is a %s, not a regular file; an image must be a regular file" % (path, kind),
                              field=field)


def open_image_file(path, field="image"):
    """Open an image file for reading, once, and return the descriptor (the caller closes it).

    The last component is opened with O_NOFOLLOW and the open descriptor must be a regular file, so a link or a
    FIFO swapped in after check_image_path is refused too. O_NONBLOCK keeps a FIFO from blocking the open; it
    changes nothing for a regular file.
    """
    check_image_path(path, field=field)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise NotFoundError("no such file where the module runs: %s" % path, field=field)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            _refuse_kind(path, stat.S_IFLNK, field)
        raise VirtfleetError("cannot open the image file %s: %s" % (path, exc), field=field)
    try:
        _refuse_kind(path, os.fstat(fd).st_mode, field)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _ChunkSource:
    """The file-like object InspectWrapper reads from: it hands back the chunk just fed."""

    chunk = b""

    def read(self, size):
        data, self.chunk = self.chunk, b""
        return data

    def close(self):
        pass


def _require_inspector():
    if not HAS_FORMAT_INSPECTOR:
        raise MissingLibraryError(
            "oslo.utils (7.3 or later) is needed to inspect images where this module runs "
            "(pip install 'oslo.utils[image-inspection]')",
            traceback=FORMAT_INSPECTOR_IMPORT_ERROR,
        )


def _describe(detected):
    if detected == _PARTITION_TABLE:
        return "a raw disk with a partition table"
    if detected == "raw":
        return "raw (no known image header)"
    return detected


def _explain(inspector, detected, check, failure):
    """One failed check, told as what was found and what to do."""
    reason = str(failure)
    if check == "backing_file":
        return ("it is a qcow2 with a backing file, which would make QEMU open another file on the host; "
                "flatten it: qemu-img convert -O qcow2 SOURCE DEST.qcow2")
    if check == "data_file":
        return ("it is a qcow2 with an external data file (data_file), which would make QEMU read and write "
                "another file on the host; " + _HINT_CONVERT)
    if check == "unknown_features":
        return ("it is a qcow2 with a version or incompatible features this inspection does not know (%s); "
                "rewrite it with qemu-img convert -O qcow2 -o compat=1.1 SOURCE DEST.qcow2" % reason)
    if detected == "vmdk" and check == "descriptor":
        subformat = getattr(inspector, "vmdktype", None) or "unknown"
        if subformat not in ("monolithicsparse", "streamoptimized"):
            return ("it is a VMDK of subformat %s: only monolithicSparse and streamOptimized VMDKs are "
                    "self-contained, others (flat, split, device-backed) name extent files QEMU would open on the "
                    "host; %s" % (_VMDK_SUBFORMATS.get(subformat, subformat), _HINT_CONVERT))
        return ("its VMDK descriptor is not safe (%s): an extent must be a plain file name in the image itself; "
                "%s" % (reason, _HINT_CONVERT))
    if detected == "vmdk" and check == "footer":
        return "its streamOptimized VMDK footer is inconsistent (%s); %s" % (reason, _HINT_CONVERT)
    if detected == _PARTITION_TABLE and check == "mbr":
        return ("its partition table is malformed (%s); rebuild the disk's partition table or ship it as qcow2"
                % reason)
    if check == "banned":
        return "%s images are never accepted; %s" % (detected, _HINT_CONVERT)
    return "the %s check of the %s inspector failed (%s)" % (check, detected, reason)
