namespace DistributedBackprop.Actors.Transport;

/// <summary>
/// A socket stream whose reads go through a large buffer and whose writes go straight through. Under the
/// TLS handshake and the sealed records that follow it, reads then take one system call per quarter
/// megabyte instead of one per record; bytes the TLS layer did not consume stay here for the record layer.
/// (BufferedStream cannot serve: it shares one buffer between reading and writing.)
/// </summary>
internal sealed class ReadBufferedStream(Stream inner, int bufferBytes) : Stream
{
    private readonly byte[] _buffer = new byte[bufferBytes];
    private int _start, _end;

    /// <summary>The stream under the buffer, for a reader that no longer needs it (once <see cref="Buffered"/> is 0).</summary>
    public Stream Inner => inner;

    /// <summary>Bytes read from the socket and not yet consumed.</summary>
    public int Buffered => _end - _start;

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        if (_start == _end)
        {
            // A request at least as large as the buffer skips it.
            if (buffer.Length >= _buffer.Length)
            {
                return inner.Read(buffer);
            }
            _start = 0;
            _end = inner.Read(_buffer, 0, _buffer.Length);
        }
        int n = Math.Min(buffer.Length, _end - _start);
        _buffer.AsSpan(_start, n).CopyTo(buffer);
        _start += n;
        return n;
    }

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (_start == _end)
        {
            _start = 0;
            _end = await inner.ReadAsync(_buffer, cancellationToken).ConfigureAwait(false);
        }
        int n = Math.Min(buffer.Length, _end - _start);
        _buffer.AsMemory(_start, n).CopyTo(buffer);
        _start += n;
        return n;
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override void Write(byte[] buffer, int offset, int count) => inner.Write(buffer, offset, count);
    public override void Write(ReadOnlySpan<byte> buffer) => inner.Write(buffer);

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) =>
        inner.WriteAsync(buffer, cancellationToken);

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        inner.WriteAsync(buffer, offset, count, cancellationToken);

    public override void Flush() => inner.Flush();
    public override Task FlushAsync(CancellationToken cancellationToken) => inner.FlushAsync(cancellationToken);
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            inner.Dispose();
        }
        base.Dispose(disposing);
    }
}
