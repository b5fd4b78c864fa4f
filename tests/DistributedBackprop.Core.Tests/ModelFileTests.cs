using System.Buffers.Binary;
using System.Text;
using DistributedBackprop.Data;
using DistributedBackprop.Models;
using DistributedBackprop.Network;

namespace DistributedBackprop.Tests;

public sealed class ModelFileTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("dbp-model-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static ModelFile Sample()
    {
        var arch = Architecture.Create(3, [4], 2, Activation.Tanh, Activation.Softmax, Loss.CrossEntropy);
        float[] parameters = Enumerable.Range(0, arch.ParameterCount).Select(i => i * 0.25f - 3).ToArray();
        return new ModelFile(arch, parameters, new Preprocessing([1, 2, 3], [0.5f, 1, 2]), ["no", "yes, really"]);
    }

    [Fact]
    public void SaveThenLoad_RoundTripsEverything()
    {
        string path = Path.Combine(_dir, "m.safetensors");
        ModelFile model = Sample();
        model.Save(path);
        ModelFile loaded = ModelFile.Load(path);
        Assert.Equal(model.Architecture, loaded.Architecture);
        Assert.Equal(model.Parameters, loaded.Parameters);
        Assert.Equal(model.Preprocessing.Shift, loaded.Preprocessing.Shift);
        Assert.Equal(model.Preprocessing.Scale, loaded.Preprocessing.Scale);
        Assert.Equal(model.Classes, loaded.Classes);
        Assert.Empty(Directory.GetFiles(_dir, "*.tmp"));
    }

    [Fact]
    public void File_FollowsThePublicSafetensorsLayout()
    {
        string path = Path.Combine(_dir, "m.safetensors");
        Sample().Save(path);
        byte[] bytes = File.ReadAllBytes(path);
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal(0UL, headerLength % 8);
        string header = Encoding.UTF8.GetString(bytes, 8, (int)headerLength);
        using var json = System.Text.Json.JsonDocument.Parse(header);
        var root = json.RootElement;
        Assert.Equal("F32", root.GetProperty("layers.0.weight").GetProperty("dtype").GetString());
        Assert.Equal([4, 3], root.GetProperty("layers.0.weight").GetProperty("shape").EnumerateArray().Select(e => e.GetInt32()));
        Assert.Equal([2], root.GetProperty("layers.1.bias").GetProperty("shape").EnumerateArray().Select(e => e.GetInt32()));
        var metadata = root.GetProperty("__metadata__");
        Assert.Equal("tanh,softmax", metadata.GetProperty("activations").GetString());
        Assert.Equal("cross_entropy", metadata.GetProperty("loss").GetString());
        Assert.Equal("no,yes, really", metadata.GetProperty("classes").GetString());
        Assert.Equal("1", metadata.GetProperty("format_version").GetString());
        // Tensor data: layers.0.weight first, little-endian float32.
        long begin = root.GetProperty("layers.0.weight").GetProperty("data_offsets")[0].GetInt64();
        Assert.Equal(-3f, BinaryPrimitives.ReadSingleLittleEndian(bytes.AsSpan(8 + (int)headerLength + (int)begin)));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(5)]
    [InlineData(20)]
    [InlineData(-10)]
    public void TruncatedFile_IsAClearError(int keep)
    {
        string path = Path.Combine(_dir, "m.safetensors");
        Sample().Save(path);
        byte[] bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..(keep >= 0 ? keep : bytes.Length + keep)]);
        var error = Assert.Throws<ModelFileException>(() => ModelFile.Load(path));
        Assert.StartsWith(path + ":", error.Message);
        Assert.True(error.Message.Contains("truncated", StringComparison.Ordinal) || error.Message.Contains("not a safetensors file", StringComparison.Ordinal), error.Message);
    }

    [Fact]
    public void ReadMetadata_GivesTheFullReadsMetadata_FromTheHeaderAlone()
    {
        string path = Path.Combine(_dir, "meta.safetensors");
        Sample().Save(path);
        Assert.Equal(SafeTensors.Read(path).Metadata, SafeTensors.ReadMetadata(path));

        // The tensors' bytes are not read: damage there (which the full read refuses) does not matter to it.
        byte[] bytes = File.ReadAllBytes(path);
        bytes[^1] ^= 0x10;
        File.WriteAllBytes(path, bytes);
        Assert.Throws<ModelFileException>(() => SafeTensors.Read(path));
        Assert.Equal("yes, really", System.Text.Json.JsonSerializer.Deserialize<string[]>(SafeTensors.ReadMetadata(path)["classes_json"])![1]);

        // A header that is cut off or implausible is the same clear error as for the full read.
        foreach (int keep in new[] { 0, 5, 20 })
        {
            File.WriteAllBytes(path, bytes[..keep]);
            var error = Assert.Throws<ModelFileException>(() => SafeTensors.ReadMetadata(path));
            Assert.StartsWith(path + ":", error.Message);
            Assert.True(error.Message.Contains("truncated", StringComparison.Ordinal) || error.Message.Contains("not a safetensors file", StringComparison.Ordinal), error.Message);
        }
    }

    [Fact]
    public void AnyByteFlippedInTheTensors_IsRefusedAsCorrupted()
    {
        string path = Path.Combine(_dir, "flip.safetensors");
        Sample().Save(path);
        byte[] original = File.ReadAllBytes(path);
        int dataStart = 8 + (int)BinaryPrimitives.ReadUInt64LittleEndian(original);
        // Every byte of the data section: one flipped bit anywhere must be caught, not give another model.
        for (int i = dataStart; i < original.Length; i += 7)
        {
            byte[] damaged = (byte[])original.Clone();
            damaged[i] ^= 0x10;
            File.WriteAllBytes(path, damaged);
            var error = Assert.Throws<ModelFileException>(() => ModelFile.Load(path));
            Assert.Contains("corrupted", error.Message);
        }
        File.WriteAllBytes(path, original);
        Assert.Equal(Sample().Parameters, ModelFile.Load(path).Parameters);
    }

    [Fact]
    public void ForeignFiles_AreRejected()
    {
        string text = Path.Combine(_dir, "notes.txt");
        File.WriteAllText(text, "hello, this is not a model at all");
        Assert.Contains("not a safetensors file", Assert.Throws<ModelFileException>(() => ModelFile.Load(text)).Message);

        string other = Path.Combine(_dir, "other.safetensors");
        DataFiles.WriteAtomically(other, s => SafeTensors.Write(s, [new Tensor("embedding", [2], [1, 2])], new Dictionary<string, string>()));
        Assert.Contains("not a DistributedBackprop model", Assert.Throws<ModelFileException>(() => ModelFile.Load(other)).Message);

        Assert.Equal($"{_dir}: is a directory, not a safetensors file", Assert.Throws<ModelFileException>(() => ModelFile.Load(_dir)).Message);
        Assert.Equal($"{_dir}: is a directory, not a safetensors file", Assert.Throws<ModelFileException>(() => SafeTensors.ReadMetadata(_dir)).Message);
    }

    [Fact]
    public void TensorShapeWhoseProductWraps_IsRefusedNamingTheTensor()
    {
        // 65536^3·16384 floats are 2^64 bytes: the byte count wraps to 0 and matched the empty data_offsets.
        string path = Path.Combine(_dir, "wrap.safetensors");
        byte[] header = Encoding.UTF8.GetBytes("""{"big":{"dtype":"F32","shape":[65536,65536,65536,16384],"data_offsets":[0,0]}}""");
        var bytes = new byte[8 + header.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)header.Length);
        header.CopyTo(bytes, 8);
        File.WriteAllBytes(path, bytes);
        var error = Assert.Throws<ModelFileException>(() => SafeTensors.Read(path));
        Assert.StartsWith($"{path}: tensor big: shape [65536,65536,65536,16384] has more than", error.Message);
    }

    [Theory]
    [InlineData("not json")]
    [InlineData("""{"a":1}""")]
    [InlineData("[null,null]")]
    [InlineData("null")]
    public void ClassesJsonThatIsNotAnArrayOfStrings_IsRefusedNamingTheKey(string classesJson)
    {
        string path = Path.Combine(_dir, "classes.safetensors");
        ModelFile model = Sample();
        Dictionary<string, string> metadata = model.Metadata();
        metadata["classes_json"] = classesJson;
        DataFiles.WriteAtomically(path, s => SafeTensors.Write(s, model.ToTensors(), metadata));
        var error = Assert.Throws<ModelFileException>(() => ModelFile.Load(path));
        Assert.StartsWith($"{path}: __metadata__.classes_json is not a JSON array of strings", error.Message);
        Assert.DoesNotContain('\n', error.Message);
    }

    [Fact]
    public void NonFiniteValues_AreRefusedNamingTheTensorAndTheFirstBadIndex()
    {
        string path = Path.Combine(_dir, "nan.safetensors");
        ModelFile model = Sample();
        model.Parameters[5] = float.NaN;
        model.Parameters[7] = float.NaN;
        model.Save(path);
        Assert.Equal($"{path}: tensor layers.0.weight holds NaN at index 5; its values must be finite",
            Assert.Throws<ModelFileException>(() => ModelFile.Load(path)).Message);

        var infiniteScale = new ModelFile(model.Architecture, Sample().Parameters, new Preprocessing([1, 2, 3], [0.5f, float.NegativeInfinity, 2]), model.Classes);
        infiniteScale.Save(path);
        Assert.Equal($"{path}: tensor input.scale holds -Infinity at index 1; its values must be finite",
            Assert.Throws<ModelFileException>(() => ModelFile.Load(path)).Message);
    }

    [Fact]
    public void WriteAtomically_LeavesTheOldFileIntact_WhenWritingFails()
    {
        string path = Path.Combine(_dir, "keep.bin");
        File.WriteAllText(path, "old");
        Assert.Throws<InvalidOperationException>(() => DataFiles.WriteAtomically(path, s =>
        {
            s.Write("partial"u8);
            throw new InvalidOperationException("disk on fire");
        }));
        Assert.Equal("old", File.ReadAllText(path));
        Assert.Single(Directory.GetFiles(_dir));
    }
}
