using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using System.Security.Cryptography;
using System.Text.Json;
using DistributedBackprop.Data;

namespace DistributedBackprop.Models;

/// <summary>A named float32 tensor.</summary>
public sealed record Tensor(string Name, int[] Shape, float[] Data)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
}

/// <summary>Bad or foreign model file; the message names the file and the problem.</summary>
public sealed class ModelFileException : Exception
{
    public ModelFileException(string message) : base(message)
    {
    }

    public ModelFileException(string message, Exception inner) : base(message, inner)
    {
    }

    public ModelFileException()
    {
    }
}

/// <summary>
/// The safetensors format (huggingface/safetensors): an unsigned 64-bit little-endian header length N,
/// N bytes of UTF-8 JSON mapping tensor names to {dtype, shape, data_offsets} plus an optional
/// "__metadata__" string→string map, then the raw little-endian tensor bytes. Offsets are relative to the
/// end of the header. Only F32 is written and read here. The header is padded with spaces to a multiple of
/// 8 bytes so the data is aligned.
/// </summary>
public static class SafeTensors
{
    private const string MetadataKey = "__metadata__";
    /// <summary>Headers beyond this are not ours (the reference implementation caps at 100 MB too).</summary>
    private const long MaxHeaderBytes = 100L * 1024 * 1024;

    /// <summary>
    /// Metadata key holding the SHA-256 of the data section (every tensor's bytes, in file order): a file
    /// damaged after it was written (a flipped bit, a truncated copy) is refused on reading instead of
    /// silently giving another model. Files written elsewhere, without the key, are read as they are.
    /// </summary>
    public const string ChecksumKey = "data_sha256";

    public static void Write(Stream stream, IReadOnlyList<Tensor> tensors, IReadOnlyDictionary<string, string> metadata)
    {
        var checksummed = new Dictionary<string, string>(metadata, StringComparer.Ordinal) { [ChecksumKey] = DataChecksum(tensors) };
        metadata = checksummed;
        var header = new MemoryStream();
        using (var json = new Utf8JsonWriter(header))
        {
            json.WriteStartObject();
            json.WriteStartObject(MetadataKey);
            foreach (var (key, value) in metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            {
                json.WriteString(key, value);
            }
            json.WriteEndObject();
            long offset = 0;
            foreach (Tensor tensor in tensors)
            {
                if (tensor.ElementCount != tensor.Data.Length)
                {
                    throw new ArgumentException($"tensor {tensor.Name}: shape [{string.Join(',', tensor.Shape)}] does not hold {tensor.Data.Length} values");
                }
                json.WriteStartObject(tensor.Name);
                json.WriteString("dtype", "F32");
                json.WriteStartArray("shape");
                foreach (int d in tensor.Shape)
                {
                    json.WriteNumberValue(d);
                }
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                offset += (long)tensor.Data.Length * sizeof(float);
                json.WriteNumberValue(offset);
                json.WriteEndArray();
                json.WriteEndObject();
            }
            json.WriteEndObject();
        }
        while (header.Length % 8 != 0)
        {
            header.WriteByte((byte)' ');
        }
        Span<byte> length = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)header.Length);
        stream.Write(length);
        header.Position = 0;
        header.CopyTo(stream);
        foreach (Tensor tensor in tensors)
        {
            if (BitConverter.IsLittleEndian)
            {
                stream.Write(MemoryMarshal.AsBytes(tensor.Data.AsSpan()));
            }
            else
            {
                var buffer = new byte[sizeof(float)];
                foreach (float value in tensor.Data)
                {
                    BinaryPrimitives.WriteSingleLittleEndian(buffer, value);
                    stream.Write(buffer);
                }
            }
        }
    }

    private static string DataChecksum(IReadOnlyList<Tensor> tensors)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        Span<byte> value = stackalloc byte[sizeof(float)];
        foreach (Tensor tensor in tensors)
        {
            if (BitConverter.IsLittleEndian)
            {
                hash.AppendData(MemoryMarshal.AsBytes(tensor.Data.AsSpan()));
                continue;
            }
            foreach (float v in tensor.Data)
            {
                BinaryPrimitives.WriteSingleLittleEndian(value, v);
                hash.AppendData(value);
            }
        }
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    public static (Dictionary<string, Tensor> Tensors, Dictionary<string, string> Metadata) Read(string path)
    {
        RefuseDirectory(path);
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ModelFileException($"{path}: cannot read: {e.Message}", e);
        }
        return Read(bytes, path);
    }

    /// <summary>On Linux, opening a directory fails with "access denied", which sends the user looking at permissions.</summary>
    private static void RefuseDirectory(string path)
    {
        if (Directory.Exists(path))
        {
            throw new ModelFileException($"{path}: is a directory, not a safetensors file");
        }
    }

    /// <summary>
    /// Only the __metadata__ of a file: its header is read, the tensors' data (and checksum) is not. For what
    /// needs a step number or a recipe out of a checkpoint that may be hundreds of megabytes.
    /// </summary>
    public static Dictionary<string, string> ReadMetadata(string path)
    {
        RefuseDirectory(path);
        byte[] header;
        try
        {
            using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            Span<byte> prefix = stackalloc byte[8];
            if (file.ReadAtLeast(prefix, 8, throwOnEndOfStream: false) < 8)
            {
                throw new ModelFileException($"{path}: not a safetensors file ({file.Length} bytes, shorter than the 8-byte header length)");
            }
            ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
            CheckHeaderLength(headerLength, file.Length, path);
            header = new byte[headerLength];
            file.ReadExactly(header);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ModelFileException($"{path}: cannot read: {e.Message}", e);
        }
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        try
        {
            using JsonDocument document = JsonDocument.Parse(header);
            if (document.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new ModelFileException($"{path}: not a safetensors file (header is not a JSON object)");
            }
            if (document.RootElement.TryGetProperty(MetadataKey, out JsonElement entry))
            {
                ReadMetadataEntry(entry, metadata, path);
            }
        }
        catch (JsonException e)
        {
            throw new ModelFileException($"{path}: not a safetensors file (header is not JSON: {e.Message})", e);
        }
        return metadata;
    }

    /// <summary>The header length must be plausible and fit the file (checked before anything is allocated for it).</summary>
    private static void CheckHeaderLength(ulong headerLength, long fileLength, string path)
    {
        if (headerLength < 2 || headerLength > MaxHeaderBytes)
        {
            throw new ModelFileException($"{path}: not a safetensors file (header length {headerLength} is implausible)");
        }
        if ((ulong)fileLength - 8 < headerLength)
        {
            throw new ModelFileException($"{path}: truncated: the header needs {headerLength} bytes after byte 8, the file has {fileLength - 8}");
        }
    }

    private static void ReadMetadataEntry(JsonElement entry, Dictionary<string, string> metadata, string path)
    {
        if (entry.ValueKind != JsonValueKind.Object)
        {
            throw new ModelFileException($"{path}: __metadata__ is not an object");
        }
        foreach (JsonProperty item in entry.EnumerateObject())
        {
            if (item.Value.ValueKind != JsonValueKind.String)
            {
                throw new ModelFileException($"{path}: __metadata__.{item.Name} is not a string");
            }
            metadata[item.Name] = item.Value.GetString()!;
        }
    }

    public static (Dictionary<string, Tensor> Tensors, Dictionary<string, string> Metadata) Read(ReadOnlySpan<byte> bytes, string path)
    {
        if (bytes.Length < 8)
        {
            throw new ModelFileException($"{path}: not a safetensors file ({bytes.Length} bytes, shorter than the 8-byte header length)");
        }
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        CheckHeaderLength(headerLength, bytes.Length, path);
        ReadOnlySpan<byte> data = bytes[(8 + (int)headerLength)..];
        (Dictionary<string, Tensor> tensors, Dictionary<string, string> metadata) = ReadEntries(bytes, headerLength, data, path);
        if (metadata.TryGetValue(ChecksumKey, out string? expected))
        {
            string actual = Convert.ToHexStringLower(SHA256.HashData(data));
            if (actual != expected)
            {
                throw new ModelFileException($"{path}: corrupted: the tensors' SHA-256 is {actual[..12]}…, the file says {(expected.Length > 12 ? expected[..12] : expected)}… (__metadata__.{ChecksumKey}); the file was damaged after it was written");
            }
        }
        return (tensors, metadata);
    }

    private static (Dictionary<string, Tensor> Tensors, Dictionary<string, string> Metadata) ReadEntries(ReadOnlySpan<byte> bytes, ulong headerLength, ReadOnlySpan<byte> data, string path)
    {
        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(bytes.Slice(8, (int)headerLength).ToArray());
        }
        catch (JsonException e)
        {
            throw new ModelFileException($"{path}: not a safetensors file (header is not JSON: {e.Message})", e);
        }
        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new ModelFileException($"{path}: not a safetensors file (header is not a JSON object)");
            }
            foreach (JsonProperty entry in document.RootElement.EnumerateObject())
            {
                if (entry.Name == MetadataKey)
                {
                    ReadMetadataEntry(entry.Value, metadata, path);
                    continue;
                }
                tensors[entry.Name] = ReadTensor(entry, data, path);
            }
        }
        return (tensors, metadata);
    }

    private static Tensor ReadTensor(JsonProperty entry, ReadOnlySpan<byte> data, string path)
    {
        string name = entry.Name;
        try
        {
            JsonElement info = entry.Value;
            string dtype = info.GetProperty("dtype").GetString() ?? "";
            if (dtype != "F32")
            {
                throw new ModelFileException($"{path}: tensor {name} has dtype {dtype}; only F32 is supported");
            }
            int[] shape = info.GetProperty("shape").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            long[] offsets = info.GetProperty("data_offsets").EnumerateArray().Select(e => e.GetInt64()).ToArray();
            if (offsets.Length != 2 || offsets[0] < 0 || offsets[1] < offsets[0])
            {
                throw new ModelFileException($"{path}: tensor {name} has invalid data_offsets");
            }
            if (shape.Any(d => d < 0))
            {
                throw new ModelFileException($"{path}: tensor {name} has a negative dimension");
            }
            long elements = DataFiles.ProductAtMost(shape, Array.MaxLength)
                ?? throw new ModelFileException($"{path}: tensor {name}: shape [{string.Join(',', shape)}] has more than {Array.MaxLength} elements, the most one tensor can hold");
            if (offsets[1] - offsets[0] != elements * sizeof(float))
            {
                throw new ModelFileException($"{path}: tensor {name}: shape [{string.Join(',', shape)}] needs {elements * 4} bytes, data_offsets give {offsets[1] - offsets[0]}");
            }
            if (offsets[1] > data.Length)
            {
                throw new ModelFileException($"{path}: truncated: tensor {name} ends at data byte {offsets[1]}, the data section has {data.Length} bytes");
            }
            var values = new float[elements];
            ReadOnlySpan<byte> raw = data[(int)offsets[0]..(int)offsets[1]];
            if (BitConverter.IsLittleEndian)
            {
                raw.CopyTo(MemoryMarshal.AsBytes(values.AsSpan()));
            }
            else
            {
                for (int i = 0; i < values.Length; i++)
                {
                    values[i] = BinaryPrimitives.ReadSingleLittleEndian(raw[(i * 4)..]);
                }
            }
            return new Tensor(name, shape, values);
        }
        catch (Exception e) when (e is KeyNotFoundException or InvalidOperationException or FormatException)
        {
            throw new ModelFileException($"{path}: tensor {name} has a malformed header entry ({e.Message})", e);
        }
    }
}
