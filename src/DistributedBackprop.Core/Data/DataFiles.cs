using System.Collections.Concurrent;
using System.IO.Compression;
using System.Runtime.InteropServices;

namespace DistributedBackprop.Data;

/// <summary>File helpers shared by the readers.</summary>
public static partial class DataFiles
{
    /// <summary>Opens a file, transparently un-gzipping it when it starts with the gzip magic 1f 8b.</summary>
    public static Stream OpenMaybeGzip(string path)
    {
        FileStream file;
        try
        {
            file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw DataException.InFile(path, $"cannot open: {e.Message}");
        }
        byte[] magic = new byte[2];
        int read = file.ReadAtLeast(magic, 2, throwOnEndOfStream: false);
        // A pipe (`--data <(zcat …)`, /dev/stdin) cannot seek back: the bytes read to sniff go in front of the rest.
        Stream content = file.CanSeek ? Rewound(file) : new PrefixedStream(magic.AsMemory(0, read), file);
        if (read == 2 && magic[0] == 0x1f && magic[1] == 0x8b)
        {
            return new CheckedGzipStream(content);
        }
        return content;
    }

    private static FileStream Rewound(FileStream file)
    {
        file.Position = 0;
        return file;
    }

    /// <summary>
    /// The product of a file's dimensions, or null when it exceeds <paramref name="limit"/>. Compared
    /// against the limit factor by factor because the plain product wraps even a long (65536^4 = 2^64 → 0).
    /// </summary>
    public static long? ProductAtMost(IReadOnlyList<int> sizes, long limit)
    {
        if (sizes.Contains(0))
        {
            return 0;
        }
        long product = 1;
        foreach (int size in sizes)
        {
            if (product > limit / size)
            {
                return null;
            }
            product *= size;
        }
        return product;
    }

    /// <summary>
    /// Writes a file atomically: the content goes to a temporary file beside the target, which is renamed
    /// over the target only once complete. A failure leaves no partial file behind.
    /// </summary>
    public static void WriteAtomically(string path, Action<Stream> write)
    {
        string full = Path.GetFullPath(path);
        switch (KindOf(full))
        {
            case PathKind.Directory:
                throw new IOException($"{path}: is a directory");
            case PathKind.Special:
                // A device, a FIFO or a socket (`--out /dev/null`, a pipe to another program): renaming a file over
                // it would replace the device node (as root, /dev/null itself). It is written to directly, as any
                // program writes to one; its errors (/dev/full: no space left) name it.
                WriteDirectly(path, full, write);
                return;
        }
        string? directory = Path.GetDirectoryName(full);
        if (directory is not null && !Directory.Exists(directory))
        {
            throw new IOException($"{path}: directory {directory} does not exist");
        }
        string temporary = Path.Combine(directory ?? ".", $".{Path.GetFileName(full)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        bool exiting;
        lock (TemporariesBeingWritten)
        {
            exiting = _exiting;
            if (!exiting)
            {
                TemporariesBeingWritten.TryAdd(temporary, 0);
            }
        }
        if (exiting)
        {
            // The process is ending (its exit handlers run): a write started now could not finish. This thread
            // waits for the end rather than report a failure that is not one.
            Thread.Sleep(Timeout.Infinite);
        }
        try
        {
            using (var stream = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temporary, full, overwrite: true);
        }
        catch (Exception e)
        {
            try
            {
                File.Delete(temporary);
            }
            catch (Exception cleanup) when (cleanup is IOException or UnauthorizedAccessException)
            {
                // The original error matters more than a leftover temporary file.
            }
            if (e is IOException or UnauthorizedAccessException)
            {
                // Named after the target, not the temporary file; a full disk or a read-only file system is
                // one line for the user, and the previous file (if any) is untouched.
                throw new IOException($"{path}: cannot write ({WithoutTemporaryName(e.Message, temporary)}); the previous file, if any, is unchanged", e);
            }
            throw;
        }
        finally
        {
            TemporariesBeingWritten.TryRemove(temporary, out _);
        }
    }

    /// <summary>
    /// The temporary files being written now. A run stopped by Ctrl-C or SIGTERM while a checkpoint is being
    /// written used to exit in the middle and leave the temporary file behind. At process exit no new write
    /// starts, those under way get a moment to finish (a checkpoint is milliseconds of writing; finished, it is
    /// complete), and whatever is still unfinished is removed: the previous file, if any, stays as it was.
    /// </summary>
    private static readonly ConcurrentDictionary<string, byte> TemporariesBeingWritten = CreateTemporaryRegistry();
    private static bool _exiting;

    private static ConcurrentDictionary<string, byte> CreateTemporaryRegistry()
    {
        var registry = new ConcurrentDictionary<string, byte>();
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            lock (registry)
            {
                _exiting = true;
            }
            var waited = System.Diagnostics.Stopwatch.StartNew();
            while (!registry.IsEmpty && waited.Elapsed < TimeSpan.FromSeconds(2))
            {
                Thread.Sleep(5);
            }
            foreach (string temporary in registry.Keys)
            {
                try
                {
                    File.Delete(temporary);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    // Exiting anyway: a file that cannot be removed stays, as before.
                }
            }
        };
        return registry;
    }

    private static void WriteDirectly(string path, string full, Action<Stream> write)
    {
        try
        {
            using var stream = new FileStream(full, FileMode.Open, FileAccess.Write, FileShare.ReadWrite, 1 << 16);
            write(stream);
            stream.Flush();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"{path}: cannot write ({e.Message.Replace($" : '{full}'", "", StringComparison.Ordinal)})", e);
        }
    }

    /// <summary>What a path names, as far as writing it is concerned.</summary>
    public enum PathKind
    {
        /// <summary>Nothing (or nothing this process may look at): created by renaming a temporary file.</summary>
        Missing,

        /// <summary>A regular file: replaced by renaming a temporary file over it.</summary>
        Regular,

        Directory,

        /// <summary>A device, FIFO or socket: written to directly.</summary>
        Special,
    }

    /// <summary>The kind of <paramref name="path"/>, following symbolic links (Linux statx; elsewhere files and directories only).</summary>
    public static PathKind KindOf(string path)
    {
        if (Directory.Exists(path))
        {
            return PathKind.Directory;
        }
        if (!File.Exists(path))
        {
            return PathKind.Missing;
        }
        if (!OperatingSystem.IsLinux())
        {
            return PathKind.Regular;
        }
        // struct statx (linux/stat.h) has the same layout on every architecture: 256 bytes, stx_mode a u16 at 0x1C.
        Span<byte> buffer = stackalloc byte[256];
        if (Statx(AtCurrentDirectory, path, 0, StatxType, ref MemoryMarshal.GetReference(buffer)) != 0)
        {
            return PathKind.Regular;
        }
        int type = BitConverter.ToUInt16(buffer[0x1C..]) & FileTypeMask;
        return type == RegularFile ? PathKind.Regular : type == DirectoryFile ? PathKind.Directory : PathKind.Special;
    }

    private const int AtCurrentDirectory = -100, FileTypeMask = 0xF000, RegularFile = 0x8000, DirectoryFile = 0x4000;
    private const uint StatxType = 0x1;

    [LibraryImport("libc", EntryPoint = "statx", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Statx(int directory, string path, int flags, uint mask, ref byte statx);

    /// <summary>
    /// An I/O error's message without the name of a temporary file this process made (.NET appends
    /// " : 'path'"): the user's line names the file they asked for.
    /// </summary>
    public static string WithoutTemporaryName(string message, string temporary) =>
        message.Replace($" : '{temporary}'", "", StringComparison.Ordinal).Replace(temporary, "a temporary file", StringComparison.Ordinal);
}

/// <summary>A stream read once from its start to its end: everything but reading is refused.</summary>
internal abstract class ReadOnceStream : Stream
{
    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public abstract override int Read(Span<byte> buffer);

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
}

/// <summary>A read-only stream of some bytes already read, then the rest of another stream.</summary>
internal sealed class PrefixedStream(ReadOnlyMemory<byte> prefix, Stream rest) : ReadOnceStream
{
    private ReadOnlyMemory<byte> _prefix = prefix;

    public override int Read(Span<byte> buffer)
    {
        if (_prefix.IsEmpty)
        {
            return rest.Read(buffer);
        }
        int taken = Math.Min(buffer.Length, _prefix.Length);
        _prefix.Span[..taken].CopyTo(buffer);
        _prefix = _prefix[taken..];
        return taken;
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            rest.Dispose();
        }
        base.Dispose(disposing);
    }
}

/// <summary>
/// A gzip file's content, checked against its trailer (RFC 1952: CRC-32 and length of the content) when it ends.
/// .NET's GZipStream reports a file cut short as an early end, so a half-downloaded data set would train on
/// part of its rows; here the end of the content throws <see cref="InvalidDataException"/> unless the last 8
/// bytes of the file are the trailer of exactly the content read (which also catches bytes after it). A file of
/// several concatenated gzip members fails the check too (its last trailer covers its last member only).
/// </summary>
internal sealed class CheckedGzipStream : ReadOnceStream
{
    private readonly TailKeeper _compressed;
    private readonly GZipStream _gzip;
    private readonly System.IO.Hashing.Crc32 _crc = new();
    private long _length;
    private bool _verified;

    public CheckedGzipStream(Stream compressed)
    {
        _compressed = new TailKeeper(compressed);
        _gzip = new GZipStream(_compressed, CompressionMode.Decompress);
    }

    public override int Read(Span<byte> buffer)
    {
        int read = _gzip.Read(buffer);
        if (read > 0)
        {
            _crc.Append(buffer[..read]);
            _length += read;
        }
        else if (buffer.Length > 0 && !_verified)
        {
            _verified = true;
            Verify();
        }
        return read;
    }

    private void Verify()
    {
        _compressed.ReadToEnd();
        ReadOnlySpan<byte> trailer = _compressed.Tail;
        uint crc = _crc.GetCurrentHashAsUInt32(), size = unchecked((uint)_length);
        if (trailer.Length < 8 || System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(trailer) != crc
            || System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(trailer[4..]) != size)
        {
            throw new InvalidDataException($"the gzip data ends after {_length} bytes without a trailer (CRC-32 and length) that matches them: the file is cut short, corrupt, has bytes after its end, or joins several gzip files");
        }
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _gzip.Dispose();
        }
        base.Dispose(disposing);
    }

    /// <summary>Passes a stream through, keeping the last 8 bytes that went by (where a gzip file keeps its trailer).</summary>
    private sealed class TailKeeper(Stream inner) : ReadOnceStream
    {
        private readonly byte[] _tail = new byte[8];
        private int _kept;

        public ReadOnlySpan<byte> Tail => _tail.AsSpan(0, _kept);

        public override int Read(Span<byte> buffer)
        {
            int read = inner.Read(buffer);
            Keep(buffer[..read]);
            return read;
        }

        /// <summary>Reads what the decompressor left unread (bytes after the trailer), so the tail is the file's last bytes.</summary>
        public void ReadToEnd()
        {
            Span<byte> scratch = stackalloc byte[4096];
            while (Read(scratch) > 0)
            {
            }
        }

        private void Keep(ReadOnlySpan<byte> bytes)
        {
            if (bytes.Length >= _tail.Length)
            {
                bytes[^_tail.Length..].CopyTo(_tail);
                _kept = _tail.Length;
                return;
            }
            int keep = Math.Min(_kept, _tail.Length - bytes.Length);
            _tail.AsSpan(_kept - keep, keep).CopyTo(_tail);
            bytes.CopyTo(_tail.AsSpan(keep));
            _kept = keep + bytes.Length;
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                inner.Dispose();
            }
            base.Dispose(disposing);
        }
    }
}
