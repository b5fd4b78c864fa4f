using System.Buffers.Binary;
using System.Security.Cryptography;
using DistributedBackprop.Actors.Transport;

namespace DistributedBackprop.Actors.Tests;

/// <summary>The bulk channel's record layer: what goes in comes out, and any change to the records on the wire is caught.</summary>
public sealed class SealedStreamsTests
{
    private sealed class NoSession : IDisposable
    {
        public void Dispose()
        {
        }
    }

    private static byte[] Seal(byte[] key, IEnumerable<byte[]> writes, bool flushEach)
    {
        var wire = new MemoryStream();
        using (var writer = new SealedWriter(new NonClosing(wire), key, new NoSession()))
        {
            foreach (byte[] write in writes)
            {
                writer.Write(write);
                if (flushEach) writer.Flush();
            }
        }
        return wire.ToArray();
    }

    private static byte[] Open(byte[] key, byte[] wire, int readSize)
    {
        using var reader = new SealedReader(new MemoryStream(wire), key, new NoSession());
        var output = new MemoryStream();
        var buffer = new byte[readSize];
        int n;
        while ((n = reader.Read(buffer)) > 0)
        {
            output.Write(buffer, 0, n);
        }
        return output.ToArray();
    }

    [Theory]
    [InlineData(0, 1, false)]
    [InlineData(1, 1, true)]
    [InlineData(1000, 7, false)]
    [InlineData(SealedRecords.MaxRecordBytes - 1, 4096, true)]
    [InlineData(SealedRecords.MaxRecordBytes, SealedRecords.MaxRecordBytes, false)]
    [InlineData(SealedRecords.MaxRecordBytes + 1, 1 << 20, false)]
    [InlineData(3 * SealedRecords.MaxRecordBytes + 17, 100_000, true)]
    public void WhatIsWritten_IsReadBack_WhateverTheWriteAndReadSizes(int bytes, int readSize, bool flushEach)
    {
        byte[] key = RandomNumberGenerator.GetBytes(SealedRecords.KeyBytes);
        byte[] data = RandomNumberGenerator.GetBytes(bytes);
        // Writes of uneven sizes: small headers and whole tensors, as frames are written.
        var writes = new List<byte[]>();
        var random = new Random(bytes);
        for (int at = 0; at < bytes;)
        {
            int n = Math.Min(bytes - at, random.Next(2) == 0 ? random.Next(1, 64) : random.Next(1, 2 * SealedRecords.MaxRecordBytes));
            writes.Add(data[at..(at + n)]);
            at += n;
        }
        byte[] wire = Seal(key, writes, flushEach);
        Assert.Equal(data, Open(key, wire, readSize));
        if (bytes > 64)
        {
            Assert.False(wire.AsSpan().IndexOf(data.AsSpan(0, 64)) >= 0, "plaintext visible on the wire");
        }
    }

    [Fact]
    public void AlteredReorderedReplayedOrTruncatedRecords_AreRefused()
    {
        byte[] key = RandomNumberGenerator.GetBytes(SealedRecords.KeyBytes);
        byte[] wire = Seal(key, [new byte[100], new byte[100]], flushEach: true);
        int record = 4 + 100 + SealedRecords.TagBytes;
        Assert.Equal(2 * record, wire.Length);

        byte[] altered = (byte[])wire.Clone();
        altered[10] ^= 1;
        Assert.Throws<InvalidDataException>(() => Open(key, altered, 1000));

        byte[] swapped = [.. wire[record..], .. wire[..record]];
        Assert.Throws<InvalidDataException>(() => Open(key, swapped, 1000));

        byte[] replayed = [.. wire[..record], .. wire[..record]];
        Assert.Throws<InvalidDataException>(() => Open(key, replayed, 1000));

        byte[] lengthChanged = (byte[])wire.Clone();
        BinaryPrimitives.WriteInt32LittleEndian(lengthChanged, 99);
        Assert.ThrowsAny<Exception>(() => Open(key, lengthChanged, 1000));

        Assert.ThrowsAny<EndOfStreamException>(() => Open(key, wire[..(record + 10)], 1000));
        Assert.Throws<InvalidDataException>(() => Open(RandomNumberGenerator.GetBytes(SealedRecords.KeyBytes), wire, 1000));
    }

    [Fact]
    public void AnOversizedRecordLength_IsRefusedBeforeReadingIt()
    {
        byte[] key = RandomNumberGenerator.GetBytes(SealedRecords.KeyBytes);
        var wire = new byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(wire, int.MaxValue);
        var problem = Assert.Throws<InvalidDataException>(() => Open(key, wire, 16));
        Assert.Contains("at most", problem.Message);
    }

    /// <summary>Keeps the memory stream readable after the writer closes its inner stream.</summary>
    private sealed class NonClosing(Stream inner) : Stream
    {
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => inner.Length;
        public override long Position { get => inner.Position; set => throw new NotSupportedException(); }
        public override void Flush() => inner.Flush();
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => inner.Write(buffer, offset, count);
    }
}
