using System.Buffers.Binary;
using System.Security.Cryptography;

namespace DistributedBackprop.Actors.Transport;

/// <summary>
/// The bulk channel's record layer after the TLS handshake. TLS authenticates both ends (mutual, against
/// the cluster CA) and carries a fresh random key from the connecting side; from then on frames travel in
/// AES-GCM records of up to <see cref="MaxRecordBytes"/> (the key is used for this one connection and this
/// one direction, the nonce is the record's sequence number, the record's length is authenticated data).
/// Why not TLS records: .NET's SslStream moves 0.6–0.7 GB/s on this project's machine with both cores
/// busy, because it seals 16 KB records through OpenSSL one call at a time, while AesGcm seals large
/// records at about 5 GB/s per core (README, Performance: "the bulk channel under TLS").
/// A reordered, replayed, truncated or altered record fails authentication and closes the connection.
/// </summary>
internal static class SealedRecords
{
    public const int KeyBytes = 16;
    public const int TagBytes = 16;
    public const int MaxRecordBytes = 256 << 10;

    /// <summary>Releases the TLS session once the socket is closed (nothing more can be sent on it).</summary>
    public static void Close(IDisposable session)
    {
        try
        {
            session.Dispose();
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException)
        {
            // the socket is already closed
        }
    }

    /// <summary>96-bit nonce: four zero bytes, then the record's sequence number (never repeats under one key).</summary>
    public static void Nonce(Span<byte> nonce, ulong sequence)
    {
        nonce[..4].Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(nonce[4..], sequence);
    }
}

/// <summary>Write side: gathers plaintext into a record and seals it when full or on <see cref="Flush"/>.</summary>
/// <param name="session">the TLS session the key came from, closed with this stream.</param>
internal sealed class SealedWriter(Stream inner, byte[] key, IDisposable session) : Stream
{
    private readonly AesGcm _aes = new(key, SealedRecords.TagBytes);
    private readonly byte[] _plain = new byte[SealedRecords.MaxRecordBytes];
    private readonly byte[] _record = new byte[4 + SealedRecords.MaxRecordBytes + SealedRecords.TagBytes];
    private readonly byte[] _nonce = new byte[12];
    private int _filled;
    private ulong _sequence;

    public override bool CanRead => false;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        // Whole records straight from the caller's memory (a tensor's floats): sealed without a copy. What
        // is pending (a frame header) goes first as a small record of its own, so the tensor's records align
        // with it and the receiver, reading the tensor, can open them in place too.
        if (buffer.Length >= _plain.Length)
        {
            Seal();
        }
        while (buffer.Length >= _plain.Length)
        {
            Seal(buffer[.._plain.Length]);
            buffer = buffer[_plain.Length..];
        }
        while (buffer.Length > 0)
        {
            int n = Math.Min(buffer.Length, _plain.Length - _filled);
            buffer[..n].CopyTo(_plain.AsSpan(_filled));
            _filled += n;
            buffer = buffer[n..];
            if (_filled == _plain.Length)
            {
                Seal();
            }
        }
    }

    public override void WriteByte(byte value) => Write([value]);

    public override void Flush()
    {
        Seal();
        inner.Flush();
    }

    private void Seal()
    {
        if (_filled == 0)
        {
            return;
        }
        Seal(_plain.AsSpan(0, _filled));
        _filled = 0;
    }

    private void Seal(ReadOnlySpan<byte> plain)
    {
        Span<byte> header = _record.AsSpan(0, 4);
        BinaryPrimitives.WriteInt32LittleEndian(header, plain.Length);
        SealedRecords.Nonce(_nonce, _sequence++);
        _aes.Encrypt(_nonce, plain, _record.AsSpan(4, plain.Length), _record.AsSpan(4 + plain.Length, SealedRecords.TagBytes), header);
        inner.Write(_record, 0, 4 + plain.Length + SealedRecords.TagBytes);
    }

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            try
            {
                Seal();
            }
            finally
            {
                _aes.Dispose();
                inner.Dispose();
                SealedRecords.Close(session);
            }
        }
        base.Dispose(disposing);
    }
}

/// <summary>Read side: opens one record at a time; a record that fails authentication raises <see cref="InvalidDataException"/>.</summary>
/// <param name="session">the TLS session the key came from, closed with this stream.</param>
internal sealed class SealedReader(Stream inner, byte[] key, IDisposable session) : Stream
{
    private readonly AesGcm _aes = new(key, SealedRecords.TagBytes);
    private readonly byte[] _plain = new byte[SealedRecords.MaxRecordBytes];
    private readonly byte[] _sealed = new byte[SealedRecords.MaxRecordBytes + SealedRecords.TagBytes];
    private readonly byte[] _header = new byte[4];
    private readonly byte[] _nonce = new byte[12];
    private int _start, _end;
    private ulong _sequence;

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        if (buffer.Length == 0)
        {
            return 0;
        }
        if (_start == _end)
        {
            int length = NextRecord();
            if (length == 0)
            {
                return 0;
            }
            // A read that takes the whole record gets it opened in place: no copy through the buffer.
            Span<byte> target = buffer.Length >= length ? buffer[..length] : _plain.AsSpan(0, length);
            SealedRecords.Nonce(_nonce, _sequence++);
            try
            {
                _aes.Decrypt(_nonce, _sealed.AsSpan(0, length), _sealed.AsSpan(length, SealedRecords.TagBytes), target, _header);
            }
            catch (AuthenticationTagMismatchException)
            {
                throw new InvalidDataException("a record failed authentication (altered, replayed or out of order)");
            }
            if (buffer.Length >= length)
            {
                return length;
            }
            _start = 0;
            _end = length;
        }
        int n = Math.Min(buffer.Length, _end - _start);
        _plain.AsSpan(_start, n).CopyTo(buffer);
        _start += n;
        return n;
    }

    /// <summary>Reads the next sealed record; its plaintext length, or 0 at a clean end of stream (between records).</summary>
    private int NextRecord()
    {
        int got = inner.ReadAtLeast(_header, 4, throwOnEndOfStream: false);
        if (got == 0)
        {
            return 0;
        }
        if (got < 4)
        {
            throw new InvalidDataException("the connection ended inside a record header");
        }
        int length = BinaryPrimitives.ReadInt32LittleEndian(_header);
        if (length <= 0 || length > SealedRecords.MaxRecordBytes)
        {
            throw new InvalidDataException($"a sealed record of {length} bytes (at most {SealedRecords.MaxRecordBytes})");
        }
        inner.ReadExactly(_sealed.AsSpan(0, length + SealedRecords.TagBytes));
        return length;
    }

    public override void Flush()
    {
    }

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _aes.Dispose();
            inner.Dispose();
            SealedRecords.Close(session);
        }
        base.Dispose(disposing);
    }
}
