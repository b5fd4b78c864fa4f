namespace DistributedBackprop.Data;

/// <summary>
/// Bad input data. The message is one line that names the file and the place in it
/// (line and column, or byte offset), e.g. <c>train.csv:17:4: 'abc' is not a number</c>.
/// </summary>
public sealed class DataException : Exception
{
    public DataException(string message) : base(message)
    {
    }

    public DataException(string message, Exception inner) : base(message, inner)
    {
    }

    public DataException()
    {
    }

    public static DataException At(string file, long line, int column, string problem) =>
        new($"{file}:{line}:{column}: {problem}");

    public static DataException AtLine(string file, long line, string problem) =>
        new($"{file}:{line}: {problem}");

    public static DataException AtByte(string file, long offset, string problem) =>
        new($"{file}: byte {offset}: {problem}");

    public static DataException InFile(string file, string problem) =>
        new($"{file}: {problem}");
}
